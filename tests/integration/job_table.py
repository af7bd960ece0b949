"""Reading the delta_job table back in tests: the states and rows the queue wrote."""

from __future__ import annotations

from typing import Any

import psycopg

import delta_actors as delta


def job_states(dsn: str) -> dict[str, int]:
    """Return {state: number of jobs} over the whole table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT state::text, count(*) FROM delta_job GROUP BY 1"))


def job_count(dsn: str) -> int:
    """Return how many rows delta_job holds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM delta_job").fetchone()
    assert row is not None
    return int(row[0])


async def running_count(conn: psycopg.AsyncConnection[Any]) -> int:
    """Return how many jobs are in state running right now."""
    cur = await conn.execute("SELECT count(*) FROM delta_job WHERE state = 'running'")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def get_job(client: delta.AsyncClient, job_id: int) -> delta.JobRow:
    """Return the job `job_id`, which must exist."""
    row = await client.get_job(job_id)
    assert row is not None, f"job {job_id} is gone"
    return row


async def is_state(client: delta.AsyncClient, job_id: int, state: delta.JobState) -> bool:
    """Tell whether job `job_id` is in `state` (a condition for wait_until_async)."""
    row = await client.get_job(job_id)
    return row is not None and row.state is state

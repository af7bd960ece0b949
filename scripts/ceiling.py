"""The PostgreSQL ceiling for a claim + complete cycle, driven as plain SQL.

Two ceilings, each the best of a small grid of connections x batch size (a loop per
connection: claim a batch, then complete it together with claiming the next, in one
pipeline round trip):

- `minimal`: the bare cycle on a table with only what a queue needs (state, payload,
  timestamps, one partial index), prepared statements, primary-key lookups. It is what
  PostgreSQL itself sustains here.
- `delta_job`: our own CLAIM_JOBS and COMPLETE_JOBS statements on our own schema, with
  the worker's parameters but with no runtime around them. Both are planned on every
  execution (the worker plans its claim once, on a connection of its own: a session in
  force_generic_plan would plan the completion generically too, which runs it slower).

A worker's drain rate over `delta_job` is the share of the statements' cost our runtime
keeps; `delta_job` over `minimal` is what our schema and fencing cost.

Usage: python scripts/ceiling.py [--count 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, LiteralString

import psycopg
from benchlib import migrated_cluster

from delta_actors.db import job_sql
from delta_actors.queue import results as outcome
from delta_actors.queue.completer import job_params
from delta_actors.queue.floors import Floors

GRID = list(itertools.product((2, 4, 10), (50, 200)))  # (connections, batch)

MINIMAL_SCHEMA = """
DROP TABLE IF EXISTS ceiling_job;
CREATE TABLE ceiling_job (
    id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'queued', payload jsonb,
    started_at timestamptz, finished_at timestamptz);
CREATE INDEX ON ceiling_job (id) WHERE state = 'queued';
"""
MINIMAL_CLAIM = """
UPDATE ceiling_job SET state = 'running', started_at = now()
WHERE id = ANY(ARRAY(SELECT id FROM ceiling_job WHERE state = 'queued' ORDER BY id
                     LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING id
"""
MINIMAL_COMPLETE = """
UPDATE ceiling_job SET state = 'completed', finished_at = now() WHERE id = ANY(%s)
"""

# Claims name an actor; the ceiling's never heartbeats, and no rescuer runs.
CEILING_ACTOR = 1
FLOORS = Floors().of()  # no floors: the statement reads every priority from the start
Step = Callable[[psycopg.AsyncConnection[Any], list[Any], int], Awaitable[list[Any]]]


async def _minimal_step(
    conn: psycopg.AsyncConnection[Any], done: list[Any], batch: int
) -> list[Any]:
    async with conn.pipeline():
        if done:
            await conn.execute(MINIMAL_COMPLETE, (done,), prepare=True)
        cur = await conn.execute(MINIMAL_CLAIM, (batch,), prepare=True)
    return [row[0] for row in await cur.fetchall()]


async def _delta_job_step(
    conn: psycopg.AsyncConnection[Any], done: list[Any], batch: int
) -> list[Any]:
    async with conn.pipeline():
        if done:
            results = [outcome.job_done(row[0], row[3]) for row in done]
            complete = job_params(results, CEILING_ACTOR)
            await conn.execute(job_sql.COMPLETE_JOBS, complete, prepare=False)
        claim = {"namespace": "default", "limit": batch, "actor": CEILING_ACTOR, "floors": FLOORS}
        cur = await conn.execute(job_sql.CLAIM_JOBS, claim, prepare=False)
    return list(await cur.fetchall())


def _fill_minimal(conn: psycopg.Connection[Any], count: int) -> LiteralString:
    conn.execute(MINIMAL_SCHEMA)
    conn.execute(
        "INSERT INTO ceiling_job (payload) SELECT '{}'::jsonb FROM generate_series(1, %s)",
        (count,),
    )
    conn.execute("VACUUM ANALYZE ceiling_job")
    return "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM ceiling_job"


def _fill_delta_job(conn: psycopg.Connection[Any], count: int) -> LiteralString:
    conn.execute("TRUNCATE delta_job, delta_resource")
    conn.execute(
        "INSERT INTO delta_job (kind, namespace, args, max_attempts)"
        " SELECT 'noop', 'default', '{}'::bytea, 25 FROM generate_series(1, %s)",
        (count,),
    )
    conn.execute("VACUUM ANALYZE delta_job")
    return "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM delta_job"


CYCLES: dict[str, tuple[Callable[[psycopg.Connection[Any], int], LiteralString], Step]] = {
    "minimal": (_fill_minimal, _minimal_step),
    "delta_job": (_fill_delta_job, _delta_job_step),
}


async def _drive(dsn: str, step: Step, connections: int, batch: int) -> None:
    async def loop() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            done: list[Any] = []
            while True:
                done = await step(conn, done, batch)
                if not done:
                    return

    await asyncio.gather(*(loop() for _ in range(connections)))


def cycle_rate(dsn: str, cycle: str, count: int, connections: int, batch: int) -> float:
    """Jobs/s of one plain-SQL claim + complete drain of `count` jobs; checks exactly once."""
    fill, step = CYCLES[cycle]
    with psycopg.connect(dsn, autocommit=True) as conn:
        check = fill(conn, count)
    started = time.perf_counter()
    asyncio.run(_drive(dsn, step, connections, batch))
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(check).fetchone()
    assert row == (count, count), f"{cycle} ceiling: not every job completed once: {row}"
    return count / elapsed


def ceiling(dsn: str, cycle: str, count: int) -> tuple[float, str]:
    """The best jobs/s over GRID, and the setting that gave it."""
    rates = {f"{c} connections, batch {b}": cycle_rate(dsn, cycle, count, c, b) for c, b in GRID}
    best = max(rates, key=lambda k: rates[k])
    return rates[best], best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    with migrated_cluster() as dsn:
        for cycle in CYCLES:
            for c, b in GRID:
                rate = cycle_rate(dsn, cycle, args.count, c, b)
                print(f"{cycle:<10} {c:>3} connections, batch {b:>3}: {rate:>9,.0f} jobs/s")


if __name__ == "__main__":
    main()

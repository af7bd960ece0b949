"""Plans that must not depend on the size of the resource and job tables (issue 18).

Each test fills the tables by SQL to 200,000 rows, analyzes them, and reads the plan
PostgreSQL makes for one of our statements: a sequential scan of a large table in any
of them is the slope that a million resources exposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

import delta_actors as delta
from delta_actors.bulk import ResourceFilter
from delta_actors.db import job_sql, resource_sql, status_sql
from delta_actors.ops.status import read_status
from delta_actors.resources.store import InformParams, inform, prepare

ROWS = 200_000


class Item(delta.Object, kind="item"):
    key: str

    def id(self) -> str:
        return self.key


@pytest.fixture
def large(dsn: str) -> Iterator[psycopg.Connection]:
    """ROWS resources of kind `item`, each with a queued work; analyzed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO delta_resource (kind, object_id, namespace, object, hash, max_attempts)
               SELECT 'item', 'item-' || i, 'default', '\\x', '\\x', 10
               FROM generate_series(0, %s - 1) AS i""",
            (ROWS,),
        )
        conn.execute(
            """INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
               SELECT kind, namespace, '\\x', id, max_attempts FROM delta_resource"""
        )
        conn.execute("ANALYZE delta_resource")
        conn.execute("ANALYZE delta_job")
        yield conn


def _plan(conn: psycopg.Connection, statement: str, params: object) -> str:
    rows = conn.execute("EXPLAIN " + statement, params, prepare=False).fetchall()  # type: ignore[arg-type]
    return "\n".join(row[0] for row in rows)


def test_an_inform_batch_probes_the_identity_index_not_the_table(large):
    """Both statements of an inform of 5,000 objects (stored ones and new ones)."""
    objects = [Item(key=f"item-{i}") for i in range(ROWS - 2_500, ROWS + 2_500)]
    params = InformParams()
    steps = inform(prepare(objects, params, None), params)
    read = next(steps)
    assert "Seq Scan on delta_resource" not in _plan(large, *read)
    stored = large.execute(*read, prepare=False).fetchall()
    assert len(stored) == 2_500
    write = steps.send(stored)  # the rows of the 2,500 stored ones are unchanged
    assert "Seq Scan" not in _plan(large, *write)


def test_a_page_deep_into_a_kind_starts_at_its_cursor(large):
    """The identity index is entered at the cursor, not walked from the kind's start."""
    where = ResourceFilter(kind="item")
    plan = _plan(
        large, resource_sql.LIST_RESOURCES, {**where.params("item/item-150000"), "limit": 100}
    )
    assert "object_id > 'item-150000'::text" in plan
    assert "Seq Scan" not in plan


def test_inspect_reads_a_resources_works_through_their_indexes(large):
    """The works of one resource: the two partial indexes on resource_id."""
    plan = _plan(large, status_sql.SELECT_LIVE_WORKS_OF_RESOURCE, {"id": 12345})
    assert "Seq Scan" not in plan
    assert "delta_job_resource_queued_idx" in plan and "delta_job_resource_running_idx" in plan


def test_a_namespace_alone_enters_its_resources_in_list_order(large):
    """A namespace whose kind sorts after every other: its page does not walk the rest."""
    large.execute(
        """INSERT INTO delta_resource (kind, object_id, namespace, object, hash, max_attempts)
           SELECT 'zeta', 'zeta-' || i, 'other', '\\x', '\\x', 10
           FROM generate_series(0, 999) AS i"""
    )
    large.execute("ANALYZE delta_resource")
    where = ResourceFilter(namespace="other")
    plan = _plan(large, resource_sql.LIST_RESOURCES, {**where.params(None), "limit": 100})
    assert "delta_resource_namespace_idx" in plan, plan
    rows = large.execute(
        resource_sql.LIST_RESOURCES, {**where.params(None), "limit": 100}, prepare=False
    ).fetchall()
    assert len(rows) == 100


def test_a_workers_look_for_cancel_requests_skips_the_jobs_it_claimed(dsn):
    """200,000 jobs the worker claimed and finished: its look reads none of them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        actor = conn.execute(
            "INSERT INTO delta_actor (host, pid, namespace, role)"
            " VALUES ('h', 1, 'default', 'worker') RETURNING id"
        ).fetchone()
        assert actor is not None
        conn.execute(
            """INSERT INTO delta_job (kind, namespace, args, state, attempt, max_attempts,
                                      claimed_by, attempted_at)
               SELECT 'noop', 'default', '\\x', 'running', 1, 5, %s, now()
               FROM generate_series(1, %s)""",
            (actor[0], ROWS),
        )
        conn.execute("ANALYZE delta_job")
        plan = _plan(conn, job_sql.SELECT_CANCEL_REQUESTS, {"actor": actor[0]})
    assert "delta_job_cancel_requested_idx" in plan, plan


def test_status_counts_a_large_queue_up_to_the_cap_and_estimates_past_it(large):
    """200,000 queued works in one namespace, 5 in another: status reads no more than
    the cap of either, and says which count is an estimate."""
    large.execute(
        """INSERT INTO delta_job (kind, namespace, args, max_attempts)
           SELECT 'noop', 'reports', '\\x', 5 FROM generate_series(1, 5)"""
    )
    large.execute("ANALYZE delta_job")
    params = {"window": 60.0, "cap": status_sql.QUEUE_COUNT_CAP}
    plan = "\n".join(
        row[0]
        for row in large.execute(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + status_sql.SELECT_QUEUES, params
        )
    )
    most = max(int(n) for n in re.findall(r"actual rows=(\d+)", plan))
    assert most <= (status_sql.QUEUE_COUNT_CAP + 1) * 2, plan  # two namespaces' samples
    queues = {q.namespace: q for q in read_status(large).queues}
    default, reports = queues["default"], queues["reports"]
    assert default.available_estimated
    assert 0.8 * ROWS <= default.available <= 1.2 * ROWS, default
    assert default.lag > 0
    assert (reports.available, reports.available_estimated) == (5, False)

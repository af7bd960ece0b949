"""Plans that must not depend on the size of the resource and job tables (issue 18).

Each test fills the tables by SQL to 200,000 rows, analyzes them, and reads the plan
PostgreSQL makes for one of our statements: a sequential scan of a large table in any
of them is the slope that a million resources exposed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, LiteralString

import httpx
import psycopg
import pytest

import delta_actors as delta
from delta_actors.bulk import ResourceFilter
from delta_actors.db import console_sql, job_sql, resource_sql, status_sql
from delta_actors.ops.status import QUEUE_PARAMS, read_status
from delta_actors.queue.completer import job_params, tid_literal, work_params
from delta_actors.queue.results import job_done, work_synced
from delta_actors.resources.store import InformParams, inform, prepare
from delta_actors.web.reads import FINISHED_CAP

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


def _worker_actor(conn: psycopg.Connection) -> int:
    """A worker's actor row, to claim as."""
    row = conn.execute(
        "INSERT INTO delta_actor (host, pid, namespace, role)"
        " VALUES ('h', 1, 'default', 'worker') RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row[0])


def _plan(conn: psycopg.Connection, statement: str, params: object) -> str:
    rows = conn.execute("EXPLAIN " + statement, params, prepare=False).fetchall()  # type: ignore[arg-type]
    return "\n".join(row[0] for row in rows)


def test_an_inform_batch_probes_the_identity_index_not_the_table(large):
    """Both statements of an inform of 5,000 objects (stored ones and new ones)."""
    objects = [Item(key=f"item-{i}") for i in range(ROWS - 2_500, ROWS + 2_500)]
    params = InformParams()
    steps = inform(prepare(objects, params, None), params)
    jit_off = next(steps)
    assert jit_off[0] == resource_sql.JIT_OFF
    read = steps.send(large.execute(*jit_off).fetchall())
    assert "Seq Scan on delta_resource" not in _plan(large, *read)
    stored = large.execute(*read, prepare=False).fetchall()
    assert len(stored) == 2_500
    write = steps.send(stored)  # the rows of the 2,500 stored ones are unchanged
    assert "Seq Scan" not in _plan(large, *write)


def _uses_jit(conn: psycopg.Connection, statement: str, params: object) -> bool:
    """Whether PostgreSQL compiles `statement` with JIT here; run and rolled back. (Not
    _run_planned: EXPLAIN prints its JIT section only with COSTS, which that leaves out.)"""
    with conn.transaction(force_rollback=True):
        cur = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement,  # type: ignore[arg-type]
            params, prepare=False,
        )  # fmt: skip
        row = cur.fetchone()
    assert row is not None
    return "JIT" in row[0][0]


def test_a_large_inform_runs_without_jit_and_leaves_the_setting_as_it_was(large):
    """JIT forced on every statement (jit_above_cost 0): an inform of 1,000 objects, half
    of them stored, reads and writes without it, then gives the setting back."""
    jit_available = large.execute("SELECT pg_jit_available()").fetchone()
    assert jit_available == (True,), "this test needs a server with JIT (llvmjit) installed"
    objects = [Item(key=f"item-{i}") for i in range(ROWS - 500, ROWS + 500)]
    params = InformParams()
    read, write = resource_sql.SELECT_STORED_RESOURCES, resource_sql.WRITE_RESOURCES
    ran: dict[str, tuple[bool, Any]] = {}
    with large.transaction():
        large.execute("SET LOCAL jit = on")
        large.execute("SET LOCAL jit_above_cost = 0")
        steps = inform(prepare(objects, params, None), params)
        statement = next(steps)
        try:
            while True:
                if statement[0] in (read, write):
                    ran[statement[0]] = (_uses_jit(large, *statement), statement[1])
                statement = steps.send(large.execute(*statement, prepare=False).fetchall())
        except StopIteration as stop:
            informed = stop.value
        assert large.execute("SELECT current_setting('jit')").fetchone() == ("on",)
        # The control: the same read, now that the setting is back, is compiled.
        assert _uses_jit(large, read, ran[read][1])
    assert [r.outcome.value for r in informed].count("created") == 500
    assert not ran[read][0] and not ran[write][0]


def test_a_page_deep_into_a_kind_starts_at_its_cursor(large):
    """The identity index is entered at the cursor, not walked from the kind's start."""
    where = ResourceFilter(kind="item")
    plan = _plan(
        large, resource_sql.LIST_RESOURCES, {**where.params("item/item-150000"), "limit": 100}
    )
    assert "object_id > 'item-150000'::text" in plan
    assert "Seq Scan" not in plan


@pytest.fixture
def tagged(large: psycopg.Connection) -> psycopg.Connection:
    """`large`, with a tenth of its resources tagged `common` and 100 tagged `rare`."""
    large.execute("UPDATE delta_resource SET tags = '{common}' WHERE id % 10 = 0")
    large.execute("UPDATE delta_resource SET tags = tags || '{rare}' WHERE id % 2000 = 7")
    large.execute("VACUUM ANALYZE delta_resource")
    return large


@pytest.mark.parametrize("after", [None, "item/item-150000"], ids=["first page", "cursor"])
@pytest.mark.parametrize("tag", ["absent", "rare"])
def test_a_tag_few_resources_carry_is_read_from_the_tags_index(tagged, tag, after):
    """No walk of the kind in page order testing each row's tags: the tags index gives
    the few rows, which are sorted. After a cursor too (a page the planner once took
    for nearly empty, and walked)."""
    where = ResourceFilter(kind="item", tags=(tag,))
    params = {**where.params(after), "limit": 100}
    plan = _plan(tagged, resource_sql.LIST_RESOURCES, params)
    assert "delta_resource_tags_idx" in plan, plan
    assert "Seq Scan on delta_resource" not in plan, plan
    rows = tagged.execute(resource_sql.LIST_RESOURCES, params, prepare=False).fetchall()
    first = tagged.execute(
        resource_sql.LIST_RESOURCES, {**where.params(None), "limit": 100}, prepare=False
    ).fetchall()
    every = sorted(row[2] for row in first)  # all of them: no more than a page
    assert len(every) == (0 if tag == "absent" else 100)
    start = after.partition("/")[2] if after else ""
    assert [row[2] for row in rows] == [key for key in every if key > start]


@pytest.mark.parametrize("after", [None, "item/item-150000"], ids=["first page", "cursor"])
def test_a_tag_many_resources_carry_walks_the_identity_index(tagged, after):
    """A page of a common tag is found within a few rows of the walk in page order,
    cheaper than sorting all of them: the planner walks, though it could read the
    tags index (the plan it makes when it may not walk)."""
    where = ResourceFilter(kind="item", tags=("common",))
    params = {**where.params(after), "limit": 100}
    plan = _plan(tagged, resource_sql.LIST_RESOURCES, params)
    assert "Index Scan using delta_resource_identity_idx" in plan, plan
    assert "delta_resource_tags_idx" not in plan, plan
    if after is not None:
        assert "object_id > 'item-150000'::text" in plan, plan
    with tagged.transaction(force_rollback=True):
        tagged.execute("SET LOCAL enable_indexscan = off")
        assert "delta_resource_tags_idx" in _plan(tagged, resource_sql.LIST_RESOURCES, params)


def test_the_estimate_of_a_tags_matches_leaves_the_index_predicate_out(tagged):
    """A confirmation's count past its cap: near the 20,000 rows that carry the tag, not
    lowered by the index's predicate counted as a condition of its own."""
    where = ResourceFilter(kind="item", tags=("common",))
    row = tagged.execute(
        resource_sql.ESTIMATE_MATCHING_RESOURCES, where.params(), prepare=False
    ).fetchone()
    assert row is not None
    assert 15_000 <= status_sql.planned_rows(row[0], 0) <= 25_000, row[0]


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
        actor = (_worker_actor(conn),)
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
    params = QUEUE_PARAMS
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


def test_the_overview_reads_a_bounded_share_of_many_plain_jobs(dsn, serve_console):
    """200,000 retryable plain jobs and 200,000 discarded within a minute: the count of
    jobs due later stops at the queue's cap and the chart's count of that minute at its
    own, neither statement is compiled with JIT, and the page labels both figures."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt,
                                      scheduled_at, finalized_at)
               SELECT 'send', 'default', '\\x', 5,
                      (CASE WHEN i %% 2 = 0 THEN 'retryable' ELSE 'discarded' END)::delta_job_state,
                      1, now() + interval '1 hour', CASE WHEN i %% 2 = 1 THEN now() END
               FROM generate_series(1, %s) AS i""",
            (2 * ROWS,),
        )
        conn.execute("ANALYZE delta_job")
        with conn.transaction():  # as status and the overview read it
            conn.execute(status_sql.WITHOUT_JIT)
            queues = _analyzed(conn, status_sql.SELECT_QUEUES, QUEUE_PARAMS)
        row = conn.execute(
            "SELECT floor(extract(epoch FROM max(finalized_at)) / 60) * 60 FROM delta_job"
        ).fetchone()
        assert row is not None
        minute = _analyzed(conn, console_sql.SELECT_FINISHED_IN_MINUTE,
                           {"minute": int(row[0]), "cap": FINISHED_CAP})  # fmt: skip
        status = {q.namespace: q for q in read_status(conn).queues}["default"]
    assert _most_rows(queues) <= status_sql.FINISHED_COUNT_CAP + 1, queues
    assert _most_rows(minute) <= FINISHED_CAP + 1, minute
    assert "JIT" not in queues and "JIT" not in minute
    assert status.waiting_estimated and 0.8 * ROWS <= status.waiting <= 1.2 * ROWS, status
    assert status.finished_capped, status
    page = httpx.get(serve_console().url + "/").text
    default = re.search(r'<tr data-namespace="default">.*?</tr>', page, re.S)
    assert default, page
    assert re.search(
        r'<td class="waiting"><span title="the planner\'s estimate[^"]*">≈', default[0]
    )
    assert f"<title>at least {FINISHED_CAP + 1}</title>" in default[0]
    assert 'id="finished-capped"' in page


def _analyzed(conn: psycopg.Connection, statement: LiteralString, params: object) -> str:
    rows = conn.execute(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + statement,
        params,  # type: ignore[arg-type]
        prepare=False,
    ).fetchall()
    return "\n".join(row[0] for row in rows)


def _most_rows(plan: str) -> int:
    """The most rows any node of an analyzed plan returned."""
    return max(int(n) for n in re.findall(r"actual rows=(\d+)", plan))


LIVE_CLAIMS = 50
CLAIM_JOB = """INSERT INTO delta_job (kind, namespace, args, state, attempt, max_attempts,
                                      claimed_by, attempted_at)
               SELECT 'noop', 'default', '\\x', 'running', 1, 5, %s, now()
               FROM generate_series(1, %s) RETURNING id"""


@pytest.mark.parametrize(
    "statement", ["jobs", "jobs where claimed", "works", "works where claimed", "hand back"]
)
@pytest.mark.parametrize("snapshot", ["held", "none"])
def test_results_read_only_their_own_claims(dsn, statement, snapshot):
    """A batch of results for 50 live claims, beside 200,000 claims of the same actor that
    ended: while another session held a snapshot (vacuum may remove none of their index
    entries, and the statistics see few running rows), or with none (vacuumed). Either way
    the batch, found by id or where its claims left the rows, reads a few buffers per id,
    not the actor's ended claims, and hashes its ids once rather than reading them again
    for each row it finds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        actor = (_worker_actor(conn),)
        with psycopg.connect(dsn) as holder:
            if snapshot == "held":
                holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                holder.execute("SELECT 1").fetchone()
            conn.execute(CLAIM_JOB, (actor[0], ROWS))
            conn.execute(
                "UPDATE delta_job SET state = 'completed', claimed_by = NULL,"
                " finalized_at = now() WHERE state = 'running'"
            )
            claimed = conn.execute(CLAIM_JOB + ", ctid::text", (actor[0], LIVE_CLAIMS)).fetchall()
            ids, tids = [row[0] for row in claimed], [row[1] for row in claimed]
            conn.execute("ANALYZE delta_job" if snapshot == "held" else "VACUUM ANALYZE delta_job")
            where_claimed = {"tids": tid_literal(tids)} if "where claimed" in statement else {}
            if statement.startswith("jobs"):
                params: Any = {
                    **job_params([job_done(i, 1) for i in ids], actor[0]),
                    **where_claimed,
                }
                found = job_sql.COMPLETE_CLAIMED_JOBS if where_claimed else job_sql.COMPLETE_JOBS
                plan, done, read = _run_planned(conn, found, params)
            elif statement.startswith("works"):
                results = [work_synced(i, 1, 1) for i in ids]
                params = {**work_params(results, actor[0]), **where_claimed}
                found = (
                    resource_sql.COMPLETE_CLAIMED_WORKS
                    if where_claimed
                    else resource_sql.COMPLETE_WORKS
                )
                plan, done, read = _run_planned(conn, found, params)
            else:
                params = {"ids": ids, "attempts": [1] * len(ids), "actor": actor[0]}
                plan, done, read = _run_planned(conn, job_sql.HAND_BACK_JOBS, params)
    assert done == LIVE_CLAIMS, plan  # the fence let every live claim through
    # Reading the ended claims' entries costs a buffer per few entries and one per heap
    # page they point at: thousands. A probe per id costs a few each.
    assert read < 20 * LIVE_CLAIMS, plan
    # And the batch's ids are read once, not again for each row found (a nested loop).
    ids_read = [line for line in plan.splitlines() if re.search(r"(Function|CTE) Scan on u ", line)]
    assert ids_read and all("loops=1)" in line for line in ids_read), plan


def _run_planned(
    conn: psycopg.Connection, statement: LiteralString, params: object
) -> tuple[str, int, int]:
    """The plan a statement ran with (EXPLAIN ANALYZE, rolled back), the rows it changed
    and the shared buffers its scans of delta_job read."""
    with conn.transaction(force_rollback=True):
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + statement,
            params,  # type: ignore[arg-type]
            prepare=False,
        ).fetchall()
    plan = "\n".join(row[0] for row in rows)
    changed = re.search(r"Update on delta_job j \(actual rows=(\d+)", plan)
    read = 0
    lines = plan.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"Scan.* on delta_job j ", line):
            for below in lines[i + 1 :]:
                if "->" in below:
                    break
                if found := re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", below):
                    read += int(found.group(1)) + int(found.group(2) or 0)
    return plan, int(changed.group(1)) if changed else -1, read


def test_a_claim_of_resource_works_probes_each_resources_running_work(dsn):
    """Queued resource works beside 200,000 ended claims that a held snapshot keeps in the
    running index: the claim's busy check probes each candidate's resource (the partial
    index on resource_id), never a hash of every running job read through that index."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        actor = _worker_actor(conn)
        with psycopg.connect(dsn) as holder:
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1").fetchone()
            conn.execute(CLAIM_JOB, (actor, ROWS))
            conn.execute(
                "UPDATE delta_job SET state = 'completed', claimed_by = NULL,"
                " finalized_at = now() WHERE state = 'running'"
            )
            conn.execute(
                """INSERT INTO delta_resource (kind, object_id, namespace, object, hash,
                                               max_attempts)
                   SELECT 'item', 'item-' || i, 'default', '\\x', '\\x', 10
                   FROM generate_series(1, 100) AS i"""
            )
            conn.execute(
                """INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
                   SELECT kind, namespace, '\\x', id, max_attempts FROM delta_resource"""
            )
            conn.execute("ANALYZE delta_job")
            params = {"namespace": "default", "limit": 50, "actor": actor,
                      "floors": [datetime(2000, 1, 1, tzinfo=UTC)] * 4}  # fmt: skip
            plan, _done, _read = _run_planned(conn, job_sql.CLAIM_JOBS, params)
    assert "hashed SubPlan" not in plan, plan
    assert "delta_job_running_idx" not in plan, plan
    assert "delta_job_resource_running_idx" in plan, plan

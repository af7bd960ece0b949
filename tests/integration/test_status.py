"""`status` and `inspect` queries against a real database with real work done on it."""

from __future__ import annotations

import asyncio
import os
import socket

import msgspec
import psycopg
import pytest

import delta_actors as delta
from delta_actors.db import leader_sql, migrations
from delta_actors.errors import ConfigError, SchemaError
from delta_actors.ops.status import NotFoundError, inspect_resource, read_status
from delta_actors.ops.tables import render_resource, render_status
from tests.integration.workers import running_worker
from tests.waiting import wait_until_async


class Good(delta.Object, kind="good"):
    key: str
    size: int = 0

    def id(self) -> str:
        return self.key


class Bad(delta.Object, kind="bad"):
    key: str

    def id(self) -> str:
        return self.key


class Parked(delta.Object, kind="parked"):
    """Lives in a namespace no worker of these tests serves: its works stay queued."""

    key: str

    def id(self) -> str:
        return self.key


class Mail(delta.Job, kind="mail"):
    to: str


class GoodController(delta.Controller[Good]):
    async def work(self, resource: delta.Resource[Good]) -> None:
        pass


class BadController(delta.Controller[Bad]):
    max_attempts = 2

    async def work(self, resource: delta.Resource[Bad]) -> None:
        raise RuntimeError(f"cannot reach the API for {resource.object_id}")


class ParkedController(delta.Controller[Parked]):
    namespace = "parked"

    async def work(self, resource: delta.Resource[Parked]) -> None:
        pass


def bounce(job: Mail) -> None:
    raise delta.PermanentError(f"mailbox {job.to} does not exist")


APP = delta.App(
    controllers=[GoodController(), BadController(), ParkedController()],
    jobs={Mail: bounce},
    namespaces={"default": delta.Namespace(max_workers=4), "parked": delta.Namespace()},
)


def resource_states(conn: psycopg.Connection) -> dict[tuple[str, str], int]:
    return {(c.kind, c.state): c.count for c in read_status(conn).resources}


async def work_everything(dsn: str) -> None:
    """Three good, one bad (degraded after 2 attempts), one bounced mail, two parked works."""
    with delta.Client.connect(dsn) as client:
        client.inform_many([Good(key=f"g{i}") for i in range(3)])
        client.inform(Bad(key="b1"), max_attempts=2)
        client.inform_many([Parked(key="p1"), Parked(key="p2")], namespace="parked")
        client.enqueue(Mail(to="nobody@example.com"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        async with running_worker(APP, dsn):

            def settled() -> bool:
                states = resource_states(conn)
                return states.get(("good", "synced")) == 3 and (
                    states.get(("bad", "degraded")) == 1
                )

            await wait_until_async(settled, 20, "good synced and bad degraded")
        # The parked works have waited five minutes, as far as lag can tell.
        conn.execute(
            "UPDATE delta_job SET scheduled_at = now() - interval '5 minutes' "
            "WHERE namespace = 'parked' AND state = 'available'"
        )


async def test_a_resource_whose_work_runs_counts_as_running(dsn):
    """While its work runs, a resource counts as running, not as its stored state."""
    release = asyncio.Event()
    started = asyncio.Event()

    class HeldController(delta.Controller[Good]):
        async def work(self, resource: delta.Resource[Good]) -> None:
            started.set()
            await release.wait()

    app = delta.App(controllers=[HeldController()])
    with delta.Client.connect(dsn) as client:
        client.inform_many([Good(key="g1"), Good(key="g2")])
    with psycopg.connect(dsn, autocommit=True) as conn:
        async with running_worker(app, dsn, max_workers=1):
            await asyncio.wait_for(started.wait(), 10)
            assert resource_states(conn) == {("good", "running"): 1, ("good", "scheduled"): 1}
            assert "RUNNING" in render_status(read_status(conn))
            release.set()
            await wait_until_async(
                lambda: resource_states(conn) == {("good", "synced"): 2}, 10, "both synced"
            )


def test_status_of_a_fresh_database_is_empty(conn):
    """No leader, actors, resources, queues or failures: empty lists, not errors."""
    status = read_status(conn)
    assert status.schema_version == migrations.required_version()
    assert status.leader is None
    assert (status.actors, status.resources, status.queues, status.failures) == ([], [], [], [])
    text = render_status(status)
    assert "leader: none elected yet" in text and "none running" in text


async def test_status_counts_resources_queues_and_failures(dsn):
    """After real work: counts by kind and state, queue depth and lag, pace, last errors."""
    await work_everything(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        status = read_status(conn)
    counts = {(c.kind, c.state): c.count for c in status.resources}
    assert counts == {("bad", "degraded"): 1, ("good", "synced"): 3, ("parked", "scheduled"): 2}
    queues = {q.namespace: q for q in status.queues}
    parked = queues["parked"]
    assert (parked.available, parked.running, parked.waiting) == (2, 0, 0)
    assert 300 <= parked.lag < 3600
    assert parked.finished_per_second == 0
    default = queues["default"]
    assert (default.available, default.running) == (0, 0)
    # 3 good + 2 attempts of bad + 1 mail finished within the minute.
    assert default.finished_per_second == pytest.approx(6 / 60)
    assert default.lag == 0
    failures = {(f.what, f.kind): f for f in status.failures}
    assert set(failures) == {("resource", "bad"), ("job", "mail")}
    bad = failures["resource", "bad"]
    assert (bad.id, bad.namespace, bad.state, bad.attempt) == ("b1", "default", "degraded", 2)
    assert bad.error == "RuntimeError: cannot reach the API for b1"
    mail = failures["job", "mail"]
    assert mail.state == "discarded"
    assert mail.error == "permanent error: mailbox nobody@example.com does not exist"
    assert status.actors == []  # the worker unregistered when it stopped

    text = render_status(status)
    for expected in ("RESOURCES", "DEGRADED", "QUEUES", "parked", "5m0", "RECENT FAILURES"):
        assert expected in text
    assert "cannot reach the API for b1" in text


async def test_status_shows_live_actors_and_the_leader(dsn):
    """A running worker appears with its heartbeat age; the lease row names the leader."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            leader_sql.ATTEMPT_ELECTION,
            {"actor": 42, "host": "leader-host", "pid": 4242, "ttl": 15.0},
        )
        async with running_worker(APP, dsn) as worker:
            status = read_status(conn)
        assert status.leader is not None
        assert (status.leader.host, status.leader.pid, status.leader.term) == (
            "leader-host", 4242, 1,
        )  # fmt: skip
        assert 0 < status.leader.expires_in <= 15
        (actor,) = status.actors
        assert (actor.id, actor.namespace, actor.role) == (worker.actor_id, "default", "worker")
        assert (actor.host, actor.pid) == (socket.gethostname(), os.getpid())
        assert 0 <= actor.heartbeat_age < 60
        assert "leader-host pid 4242 (actor 42), term 1" in render_status(status)

        conn.execute("UPDATE delta_leader SET expires_at = now() - interval '1 minute'")
        assert "let its lease expire" in render_status(read_status(conn))


async def test_inspect_shows_object_state_attempts_and_error_history(dsn):
    """A degraded resource: its object, generation, attempts and both errors, newest last."""
    await work_everything(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        detail = inspect_resource(conn, "bad", "b1")
    assert (detail.kind, detail.object_id, detail.namespace) == ("bad", "b1", "default")
    assert (detail.state, detail.generation, detail.attempt, detail.max_attempts) == (
        "degraded", 1, 2, 2,
    )  # fmt: skip
    assert msgspec.json.decode(detail.object) == {"key": "b1"}
    assert [e.attempt for e in detail.errors] == [1, 2]
    assert all("cannot reach the API for b1" in e.error for e in detail.errors)
    assert detail.works == []
    text = render_resource(detail)
    assert "state:      degraded" in text
    assert '"key": "b1"' in text
    assert "attempt 2: RuntimeError: cannot reach the API for b1" in text


async def test_inspect_lists_the_queued_work_of_a_resource(dsn):
    """A resource whose work waits shows that work; JSON carries the object as JSON."""
    with delta.Client.connect(dsn) as client:
        client.inform(
            Parked(key="p1"), namespace="parked", tags=["vip"], metadata={"source": "crm"}
        )
    with psycopg.connect(dsn, autocommit=True) as conn:
        detail = inspect_resource(conn, "parked", "p1")
    (work,) = detail.works
    assert (work.state, work.attempt, work.claimed_by) == ("available", 0, None)
    assert (detail.tags, detail.metadata) == (["vip"], {"source": "crm"})
    encoded = msgspec.json.decode(msgspec.json.encode(detail))
    assert encoded["object"] == {"key": "p1"}
    assert encoded["works"][0]["state"] == "available"


def test_inspect_of_what_is_not_there_names_what_is(dsn):
    """Unknown id of a stored kind, unknown kind (listing stored kinds), invalid kind name."""
    with delta.Client.connect(dsn) as client:
        client.inform(Good(key="g1"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(NotFoundError, match="no good resource with id 'nope'"):
            inspect_resource(conn, "good", "nope")
        with pytest.raises(
            NotFoundError, match=r"no resources of kind 'goods' \(kinds stored: good\)"
        ):
            inspect_resource(conn, "goods", "g1")
        with pytest.raises(ConfigError, match="invalid kind 'Good!'"):
            inspect_resource(conn, "Good!", "g1")


def test_status_and_inspect_of_an_unmigrated_database_name_migrate(empty_dsn):
    """No schema: SchemaError naming `delta-actors migrate`, from both."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(SchemaError, match="delta-actors migrate"):
            read_status(conn)
        with pytest.raises(SchemaError, match="delta-actors migrate"):
            inspect_resource(conn, "good", "g1")


def _estimated_table(dsn: str) -> None:
    """3,000 good resources (scheduled), 40 of them degraded, one parked; analyzed."""
    with delta.Client.connect(dsn, app=APP) as client:
        client.inform_many([Good(key=f"g{i:05d}") for i in range(3000)])
        client.inform(Parked(key="p"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE delta_resource SET state = 'degraded'"
            " WHERE kind = 'good' AND object_id < 'g00040'"
        )
        conn.execute("ANALYZE delta_resource")


def test_status_of_a_large_table_estimates_counts_and_says_so(dsn):
    """Past `exact_below` rows: scheduled counts come from statistics, marked estimated
    (`~` in the text); degraded ones are still counted exactly."""
    _estimated_table(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        exact = read_status(conn).resources
        estimated = read_status(conn, exact_below=1000).resources
        # One more degraded after ANALYZE: the exact part sees it, the estimate does not.
        conn.execute("UPDATE delta_resource SET state = 'degraded' WHERE object_id = 'g00040'")
        later = read_status(conn, exact_below=1000)
    assert {(c.kind, c.state, c.count, c.estimated) for c in exact} == {
        ("good", "degraded", 40, False),
        ("good", "scheduled", 2960, False),
        ("parked", "scheduled", 1, False),
    }
    # ANALYZE sampled every row of so small a table: the shares are exact too.
    assert {(c.kind, c.state, c.count, c.estimated) for c in estimated} == {
        ("good", "degraded", 40, False),
        ("good", "scheduled", 2960, True),
        ("parked", "scheduled", 1, True),
    }
    counts = {(c.kind, c.state): c.count for c in later.resources}
    assert counts[("good", "degraded")] == 41
    text = render_status(later)
    assert "~2960" in text and "estimated from the planner's statistics" in text
    encoded = msgspec.json.decode(msgspec.json.encode(later))
    assert {"kind": "good", "state": "scheduled", "count": 2960, "estimated": True} in (
        encoded["resources"]
    )


def test_status_estimates_for_a_role_that_does_not_own_the_table(dsn):
    """A role with SELECT only cannot read the extended statistics: the estimate falls
    back to the columns' own statistics, still marked estimated."""
    _estimated_table(dsn)
    role = f"reader_{os.getpid()}_{abs(hash(dsn)) % 100000}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            conn.execute(f"SET ROLE {role}")
            shares = conn.execute(
                "SELECT count(*) FROM pg_stats_ext WHERE tablename = 'delta_resource'"
            ).fetchone()
            status = read_status(conn, exact_below=1000)
            conn.execute("RESET ROLE")
        finally:
            conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            conn.execute(f"DROP ROLE {role}")
    assert shares == (0,)
    counts = {(c.kind, c.state): (c.count, c.estimated) for c in status.resources}
    assert counts[("good", "degraded")] == (40, False)
    # kind and state taken as independent: 3000/3001 good times 2960/3001 scheduled.
    assert counts[("good", "scheduled")][1] is True
    assert abs(counts[("good", "scheduled")][0] - 2960) <= 2


def test_status_counts_exactly_before_the_first_analyze(dsn):
    """No statistics yet (never analyzed): counted, not guessed."""
    with delta.Client.connect(dsn, app=APP) as client:
        client.inform_many([Good(key=f"g{i}") for i in range(10)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        resources = read_status(conn, exact_below=0).resources
    assert [(c.kind, c.state, c.count, c.estimated) for c in resources] == [
        ("good", "scheduled", 10, False)
    ]

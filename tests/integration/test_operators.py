"""The operator's hands: list, retry, delete and cancel by filter; pause and resume."""

from __future__ import annotations

import asyncio
import json
import time
from typing import ClassVar

import psycopg
import pytest

import delta_actors as delta
from delta_actors import bulk
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async


class Account(Keyed, kind="account"):
    fails_with: str = ""


class AccountController(delta.Controller[Account]):
    max_attempts = 1
    runs: ClassVar[list[str]] = []

    async def work(self, resource: delta.Resource[Account]) -> None:
        type(self).runs.append(resource.object.key)
        if resource.object.fails_with:
            raise RuntimeError(resource.object.fails_with)


class Ping(delta.Job, kind="ops-ping"):
    n: int = 0


async def ping(job: Ping) -> None:
    if job.n < 0:
        raise delta.PermanentError("negative")


@pytest.fixture(autouse=True)
def fresh() -> None:
    AccountController.runs = []


def make_app() -> delta.App:
    return delta.App(
        controllers=[AccountController()],
        jobs={Ping: ping},
        namespaces={"default": delta.Namespace(max_workers=20), "other": delta.Namespace()},
    )


async def settle(client: delta.AsyncClient, count: int) -> None:
    async def settled() -> bool:
        page = await client.list(Account, state="scheduled", namespace="default", limit=1)
        running = await client.list(Account, state="running", namespace="default", limit=1)
        return not page.items and not running.items

    await wait_until_async(settled, 15, f"{count} accounts worked")


async def test_list_pages_by_every_filter_without_skips_or_repeats(dsn, monkeypatch):
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Account(key=f"a{i:03d}") for i in range(250)], tags=["bulk"])
        await client.inform_many([Account(key="vip-1"), Account(key="vip-2")], tags=["vip", "x"])
        await client.inform(Account(key="elsewhere"), namespace="other")
        seen: list[str] = []
        after = None
        while True:
            page = await client.list(Account, tags=["bulk"], after=after, limit=100)
            seen += [r.object_id for r in page.items]
            if page.next is None:
                break
            after = page.next
        assert seen == [f"a{i:03d}" for i in range(250)]
        vip = await client.list(Account, tags=["vip", "x"])
        assert [r.object_id for r in vip.items] == ["vip-1", "vip-2"]
        assert vip.next is None
        assert (await client.list(Account, tags=["vip", "nope"])).items == []
        other = await client.list(Account, namespace="other")
        assert [r.object_id for r in other.items] == ["elsewhere"]
        picked = await client.list(Account, ids=["a007", "vip-2", "missing"])
        assert [r.object_id for r in picked.items] == ["a007", "vip-2"]
        async with running_worker(app, dsn):
            await client.inform_many(
                [Account(key="t1", fails_with="upstream Timeout"),
                 Account(key="t2", fails_with="503 from upstream")],
            )  # fmt: skip
            await settle(client, 255)
        degraded = await client.list(Account, state=delta.State.DEGRADED)
        assert [r.object_id for r in degraded.items] == ["t1", "t2"]
        timeouts = await client.list(Account, state="degraded", error="timeout")
        assert [r.object_id for r in timeouts.items] == ["t1"]
        with pytest.raises(delta.ConfigError, match=r"unknown state 'broken' \(valid: scheduled"):
            await client.list(Account, state="broken")
        with pytest.raises(delta.ConfigError, match="not a cursor of this listing"):
            await client.list(Account, after="nonsense")
        with pytest.raises(delta.ConfigError, match=r"limit must be 1\.\.10000"):
            await client.list(Account, limit=0)
        with pytest.raises(delta.ConfigError, match="tags must be a list of strings"):
            await client.list(Account, tags="vip")


async def test_retry_by_filter_resets_attempts_keeps_errors_and_works_them_again(dsn, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH", 7)  # several batches, each with its cursor
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many(
            [Account(key=f"t{i:02d}", fails_with="timeout") for i in range(30)]
            + [Account(key=f"e{i:02d}", fails_with="HTTP 500") for i in range(5)]
            + [Account(key="fine")]
        )
        async with running_worker(app, dsn):
            await settle(client, 36)
        assert await client.retry(Account, state=delta.State.DEGRADED, error="timeout") == 30
        again = await client.get(Account, "t05")
        assert again is not None
        assert again.state is delta.State.SCHEDULED
        assert again.attempt == 0
        assert [e.error for e in again.errors] == ["RuntimeError: timeout"]
        still = await client.get(Account, "e01")
        assert still is not None
        assert still.state is delta.State.DEGRADED
        assert await client.retry(Account, ids=["e01", "fine", "nobody"]) == 2
        async with running_worker(app, dsn):
            await settle(client, 32)
        assert AccountController.runs.count("t05") == 2
        assert AccountController.runs.count("fine") == 2
        assert AccountController.runs.count("e02") == 1


async def test_delete_by_filter_goes_the_one_way_out_in_batches(dsn, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH", 4)
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many([Account(key=f"old{i}") for i in range(10)], tags=["old"])
        await client.inform_many([Account(key=f"new{i}") for i in range(3)])
        assert await client.delete(Account, tags=["old"]) == 10
        assert await client.delete(Account, tags=["old"]) == 0  # already deleted
        deleted = await client.list(Account, state=delta.State.DELETED, limit=50)
        assert sorted(r.object_id for r in deleted.items) == sorted(f"old{i}" for i in range(10))
        assert len((await client.list(Account, state="scheduled")).items) == 3
        with pytest.raises(delta.ConfigError, match="would delete every resource of the kind"):
            await client.delete(Account)
        with pytest.raises(delta.ConfigError, match="an object id or filters, not both"):
            await client.delete(Account, "new1", tags=["old"])


def test_jobs_by_filter_list_retry_and_cancel(dsn):
    app = make_app()
    with delta.Client.connect(dsn, app=app) as client:
        bad = client.enqueue_many([Ping(n=-1) for _ in range(3)], max_attempts=1)
        waiting = client.enqueue_many([Ping(n=i) for i in range(4)], namespace="other")

        async def drain() -> None:
            async with running_worker(app, dsn):
                await wait_until_async(
                    lambda: len(client.list_jobs(Ping, state="discarded").items) == 3, 10
                )

        asyncio.run(drain())
        discarded = client.list_jobs("ops-ping", state=delta.JobState.DISCARDED, limit=2)
        assert [j.id for j in discarded.items] == [j.id for j in bad[:2]]
        rest = client.list_jobs("ops-ping", state=delta.JobState.DISCARDED, after=discarded.next)
        assert [j.id for j in rest.items] == [bad[2].id]
        assert rest.items[0].errors[-1].error == "permanent error: negative"
        assert client.retry_jobs(Ping, state="discarded") == 3
        retried = client.get_job(bad[0].id)
        assert retried is not None
        assert retried.state is delta.JobState.AVAILABLE
        assert retried.max_attempts == 2  # its one attempt was used: one more allowed
        assert client.cancel_jobs(Ping, namespace="other", ids=[w.id for w in waiting[:2]]) == 2
        assert client.cancel_jobs(Ping, namespace="other") == 2
        cancelled = client.list_jobs(Ping, state="cancelled")
        assert sorted(j.id for j in cancelled.items) == sorted(w.id for w in waiting)
        assert client.retry_jobs(Ping, state="available") == 0  # waiting already


async def test_pause_stops_claims_everywhere_and_resume_lets_them_go_on(dsn):
    app = make_app()
    async with (
        await delta.AsyncClient.connect(dsn, app=app) as client,
        running_worker(app, dsn),
        running_worker(app, dsn),
    ):
        await client.pause("default")
        await client.pause("default")  # twice: still paused, no error
        await client.inform_many([Account(key=f"p{i}") for i in range(5)])
        await client.enqueue(Ping(n=1))
        await asyncio.sleep(1.5)  # past a poll and the NOTIFY: nothing is claimed
        assert AccountController.runs == []
        assert len((await client.list(Account, state="scheduled")).items) == 5
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT name FROM delta_namespace WHERE paused_at IS NOT NULL")
            assert await cur.fetchall() == [("default",)]
        await client.resume("default")
        await settle(client, 5)
        assert sorted(AccountController.runs) == [f"p{i}" for i in range(5)]
        await client.resume("default")  # not paused: a no-op
    with pytest.raises(delta.ConfigError, match="namespace"):
        await client.pause("Not A Name")


# ---------------------------------------------------------------- the command line


async def test_cli_lists_counts_and_acts_on_a_filter_with_a_dry_run_first(dsn, monkeypatch):
    from click.testing import CliRunner

    from delta_actors.ops.cli import main

    monkeypatch.delenv("DELTA_DATABASE_URL", raising=False)
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        await client.inform_many(
            [Account(key=f"d{i:02d}", fails_with="Timeout talking to billing") for i in range(12)]
            + [Account(key="ok")],
            tags=["eu"],
        )
        async with running_worker(app, dsn):
            await settle(client, 13)
    cli = CliRunner()

    def run(*argv: str) -> str:
        result = cli.invoke(main, [*argv, "--dsn", dsn])
        assert result.exit_code == 0, result.output
        return result.output

    listed = run("resources", "list", "--kind", "account", "--state", "degraded", "--limit", "5")
    assert "d00" in listed
    assert "Timeout talking to billing" in listed
    assert "more: add --after account/d04" in listed
    page = json.loads(run("resources", "list", "--state", "degraded", "--after", "account/d04",
                          "--json"))  # fmt: skip
    assert [item["id"] for item in page["items"]] == [f"d{i:02d}" for i in range(5, 12)]
    assert page["next"] is None
    assert page["items"][0]["error"] == "RuntimeError: Timeout talking to billing"
    dry = run("resources", "retry", "--kind", "account", "--error", "timeout", "--dry-run")
    assert dry.startswith("would retry 12 resources (dry run: nothing changed)")
    assert "first: account/d00, account/d01" in dry
    assert len(await _degraded(dsn)) == 12  # the dry run changed nothing
    done = json.loads(run("resources", "retry", "--kind", "account", "--error", "timeout",
                          "--json"))  # fmt: skip
    assert done == {"action": "retry", "count": 12, "dry_run": False, "first": []}
    assert await _degraded(dsn) == []
    assert "delete: 1 resources" in run("resources", "delete", "--kind", "account", "--id", "ok")
    unknown = run("resources", "invalidate", "--kind", "account", "--id", "nobody")
    assert unknown.strip() == "no such resources: nothing to invalidate"
    nothing = cli.invoke(main, ["resources", "delete", "--dsn", dsn])
    assert nothing.exit_code == 2
    assert "no filter given" in nothing.output
    bad_state = cli.invoke(main, ["resources", "list", "--state", "borked", "--dsn", dsn])
    assert bad_state.exit_code == 2
    assert "unknown state 'borked'" in bad_state.output
    assert "paused namespace default" in run("pause", "default")
    assert "resumed namespace default" in run("resume", "default")
    jobs = json.loads(run("jobs", "list", "--kind", "ops-ping", "--json"))
    assert jobs == {"items": [], "next": None}
    assert "would cancel 0 jobs" in run("jobs", "cancel", "--kind", "ops-ping", "--dry-run")


async def _degraded(dsn: str) -> list[tuple[str]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT object_id FROM delta_resource WHERE state = 'degraded' ORDER BY 1"
        )
        return [tuple(row) for row in await cur.fetchall()]


class Slow(delta.Job, kind="ops-slow"):
    blocking: bool = False


slow_started: list[int] = []


async def slow(job: Slow) -> None:
    slow_started.append(1)
    await asyncio.sleep(60)


def slow_sync(job: Slow) -> None:
    slow_started.append(1)
    time.sleep(5)  # cannot be interrupted: its thread is left to finish


async def test_cancel_jobs_asks_running_jobs_to_stop_and_they_end_cancelled(dsn):
    slow_started.clear()
    for handler in (slow, slow_sync):
        app = delta.App(jobs={Slow: handler})
        async with (
            await delta.AsyncClient.connect(dsn, app=app) as client,
            running_worker(app, dsn, poll_interval=0.2),
        ):
            (job,) = await client.enqueue_many([Slow()])
            await wait_until_async(lambda: slow_started, 5, "the job to start")
            assert await client.cancel_jobs(Slow, state="running") == 1
            assert await client.cancel_jobs(Slow, state="running") == 0  # asked already

            async def cancelled(job_id: int = job.id) -> bool:
                found = await client.get_job(job_id)
                return found is not None and found.state is delta.JobState.CANCELLED

            await wait_until_async(cancelled, 5, "the run to stop")
            stopped = await client.get_job(job.id)
            assert stopped is not None
            assert stopped.errors[-1].error == (
                "cancelled: asked to stop by an operator (cancel_jobs)"
            )
        slow_started.clear()


async def test_a_retry_of_100000_degraded_resources_leaves_informs_going(dsn):
    """The retry runs in batches, each its own short transaction: informs of the same
    resources, made meanwhile, go through (none fails, none waits for the whole retry),
    and each ends with its newer generation."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO delta_resource (kind, object_id, namespace, object, hash, max_attempts,"
            " state, attempt, errors) SELECT 'account', 'r' || lpad(g::text, 6, '0'), "
            "'default', convert_to('{\"key\":\"r' || lpad(g::text, 6, '0') || '\"}', 'UTF8'),"
            ' \'\\x00\', 1, \'degraded\', 1, ARRAY[\'{"at":0,"attempt":1,"error":"503"}\'::jsonb]'
            " FROM generate_series(1, 100000) AS g"
        )
    app = make_app()
    async with await delta.AsyncClient.connect(dsn, app=app) as client:
        retry = asyncio.create_task(client.retry(Account, state=delta.State.DEGRADED))
        informed: list[int] = []
        while not retry.done():
            # Resources the retry may be working on: newer objects of the same ids.
            i = 99_999 - len(informed) * 37
            result = await client.inform(Account(key=f"r{i:06d}", fails_with="newer"))
            informed.append(result.resource.generation)
        retried = await retry
        assert len(informed) >= 3, "informs waited for the whole retry"
        assert retried >= 100_000 - len(informed)  # those informed first were not degraded
        assert all(generation == 2 for generation in informed)
        left = await client.list(Account, state=delta.State.DEGRADED)
        assert left.items == []
        sample = await client.get(Account, "r050000")
        assert sample is not None
        assert sample.state is delta.State.SCHEDULED
        assert sample.attempt == 0
        assert [e.error for e in sample.errors] == ["503"]

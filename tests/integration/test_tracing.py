"""OpenTelemetry: spans for informs, runs, informer runs and claims; the inform's trace
context rides with its work; without the extra (or without a recording span) nothing is
written and no middleware is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.resources.informers import InformerScheduler
from delta_actors.testing import Runner
from tests.integration.test_leader import _lead
from tests.integration.workers import running_worker
from tests.objects import Keyed
from tests.waiting import wait_until_async

ROOT = Path(__file__).resolve().parents[2]


class Parcel(Keyed, kind="tr-parcel"):
    pass


class Label(delta.Job, kind="tr-label"):
    n: int


class ParcelController(delta.Controller[Parcel]):
    async def work(self, resource: delta.Resource[Parcel]) -> None:
        if resource.object.key == "lost":
            raise RuntimeError("no such address")

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Parcel]:
        yield Parcel(key="listed")


async def label(job: Label) -> None:
    return None


def _app() -> delta.App:
    return delta.App(controllers=[ParcelController()], jobs={Label: label})


def _metadata(dsn: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT metadata FROM delta_job ORDER BY id")]


async def test_a_work_continues_the_trace_of_its_inform_with_its_attributes(dsn, spans):
    tracer = trace.get_tracer("tests")
    async with await delta.AsyncClient.connect(dsn) as client:
        with tracer.start_as_current_span("POST /parcels") as request:
            result = await client.inform(Parcel(key="p1"))
            await client.inform_many([Parcel(key="lost"), Parcel(key="p2")])
        assert result.outcome is delta.InformOutcome.CREATED
        assert await client.inform(Parcel(key="p1")) is not None  # unchanged: no work
        stored = _metadata(dsn)[0]
        assert set(stored) == {"traceparent"}  # the W3C context, in the work's row
        async with running_worker(_app(), dsn) as worker:
            await wait_until_async(lambda: len(spans.named("work ")) >= 3)
            assert worker.stats.completed >= 2
    informs = spans.named("inform ")
    one, many, unchanged = informs
    assert one.name == "inform tr-parcel" and one.kind is SpanKind.PRODUCER
    assert one.parent is not None and one.parent.span_id == request.get_span_context().span_id
    assert dict(one.attributes or {}) == {
        "delta.kind": "tr-parcel", "delta.namespace": "default", "delta.count": 1,
        "delta.id": "p1", "delta.outcome": "created",
    }  # fmt: skip
    assert (many.attributes or {})["delta.outcome.created"] == 2
    assert (unchanged.attributes or {})["delta.outcome"] == "unchanged"
    works = {(span.attributes or {})["delta.id"]: span for span in spans.named("work ")}
    p1 = works["p1"]
    assert p1.kind is SpanKind.CONSUMER
    assert p1.context.trace_id == request.get_span_context().trace_id
    assert p1.parent is not None and p1.parent.span_id == one.context.span_id
    assert dict(p1.attributes or {}) == {
        "delta.kind": "tr-parcel", "delta.id": "p1", "delta.namespace": "default",
        "delta.attempt": 1, "delta.handler": "work", "delta.generation": 1,
        "delta.outcome": "synced",
    }  # fmt: skip
    assert works["p2"].parent is not None and works["p2"].parent.span_id == many.context.span_id
    lost = works["lost"]
    assert (lost.attributes or {})["delta.outcome"] == "failed"
    assert lost.status.status_code is StatusCode.ERROR
    assert [event.name for event in lost.events] == ["exception"]
    claims = spans.named("claim ")
    assert claims and sum((c.attributes or {})["delta.claimed"] for c in claims) >= 3
    assert all((c.attributes or {})["delta.claimed"] > 0 for c in claims)  # idle ones: none


async def test_plain_jobs_get_run_spans_and_informer_runs_parent_their_works(dsn, spans):
    app = _app()
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as pool:
        term = await _lead(dsn)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO delta_informer (kind) VALUES ('tr-parcel')")
        result = await InformerScheduler(app, pool).run_informer("tr-parcel", term, 1)
    assert result["objects"] == 1
    (informer,) = spans.named("informer ")
    assert dict(informer.attributes or {}) == {
        "delta.kind": "tr-parcel", "delta.full": True, "delta.objects": 1, "delta.tombstoned": 0,
    }  # fmt: skip
    async with await delta.AsyncClient.connect(dsn) as client:
        job = await client.enqueue(Label(n=1))
        async with running_worker(app, dsn):
            await wait_until_async(lambda: len(spans.named("work ")) >= 1)
            await wait_until_async(lambda: len(spans.named("job ")) >= 1)
    (work,) = spans.named("work ")
    assert work.parent is not None and work.parent.span_id == informer.context.span_id
    (enqueue,) = spans.named("enqueue ")
    assert enqueue.parent is None  # a root: the enqueue ran in no span of the caller's
    (run,) = spans.named("job ")
    assert run.name == "job tr-label"
    assert run.parent is not None and run.parent.span_id == enqueue.context.span_id
    assert dict(run.attributes or {}) == {
        "delta.kind": "tr-label", "delta.id": str(job.id), "delta.namespace": "default",
        "delta.attempt": 1, "delta.handler": "job", "delta.outcome": "completed",
    }  # fmt: skip


async def test_a_job_continues_the_trace_of_its_enqueue_on_every_insert_path(dsn, spans):
    """One job (a VALUES insert), a unique-keyed one (the unnest insert) and a bulk batch
    (COPY, some scheduled): each row carries the context of its call's enqueue span."""
    tracer = trace.get_tracer("tests")
    later = datetime.now(UTC) + timedelta(milliseconds=300)
    async with await delta.AsyncClient.connect(dsn) as client:
        with tracer.start_as_current_span("POST /labels") as request:
            one = await client.enqueue(Label(n=1))
            keyed = await client.enqueue(Label(n=2), unique_key="label-2")
            again = await client.enqueue(Label(n=2), unique_key="label-2")
            bulk = await client.enqueue_many(
                [delta.JobSpec(Label(n=n), scheduled_at=later if n % 2 else None)
                 for n in range(3, 303)]
            )  # fmt: skip
        assert await client.enqueue_many([]) == []  # nothing queued: no span either
    assert again.duplicate and again.id == keyed.id
    assert all(set(metadata) == {"traceparent"} for metadata in _metadata(dsn))
    async with running_worker(_app(), dsn):
        await wait_until_async(lambda: len(spans.named("job ")) >= 302)
    first, second, third, many = spans.named("enqueue ")
    for span in (first, second, third, many):
        assert span.kind is SpanKind.PRODUCER
        assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    assert dict(first.attributes or {}) == {
        "delta.kind": "tr-label", "delta.namespace": "default", "delta.count": 1,
        "delta.id": one.id,
    }  # fmt: skip
    assert (third.attributes or {})["delta.duplicates"] == 1
    assert (many.attributes or {})["delta.count"] == 300
    parent_of = {
        (span.attributes or {})["delta.id"]: span.parent.span_id
        for span in spans.named("job ") if span.parent is not None
    }  # fmt: skip
    assert parent_of[str(one.id)] == first.context.span_id
    assert parent_of[str(keyed.id)] == second.context.span_id
    assert {parent_of[str(job.id)] for job in bulk} == {many.context.span_id}


class Crate(Keyed, kind="tr-crate"):
    pass


class CrateController(delta.Controller[Crate]):
    max_attempts = 2

    async def work(self, resource: delta.Resource[Crate]) -> None:
        if resource.object.key == "broken":
            raise RuntimeError("the crate is broken")

    async def finalize(self, resource: delta.Resource[Crate]) -> None:
        return None


def test_a_finalize_and_a_last_failed_attempt_have_spans_saying_what_they_came_to(dsn, spans):
    """Run by delta.testing's Runner (an actor's run path, in this process): a work's
    failed attempts are `failed` until the last, which degrades the resource; a finalize
    is a `finalize KIND` span of the deletion's generation."""
    app = delta.App(controllers=[CrateController()])
    with delta.Client.connect(dsn, app=app) as client:
        runner = Runner(app, client, retry_policy=lambda attempt: 60.0)
        client.inform_many([Crate(key="c1"), Crate(key="broken")])
        assert runner.run_until_idle().failed == ["tr-crate/broken"]
        assert runner.advance(60.0).degraded == ["tr-crate/broken"]
        client.delete(Crate, "c1")
        assert runner.run_until_idle().deleted == ["tr-crate/c1"]
    runs = [
        (span.name, dict(span.attributes or {}), span.status.status_code)
        for span in spans.named("work ") + spans.named("finalize ")
    ]
    common = {"delta.kind": "tr-crate", "delta.namespace": "default"}
    assert runs == [
        ("work tr-crate", {**common, "delta.id": "c1", "delta.attempt": 1,
          "delta.handler": "work", "delta.generation": 1, "delta.outcome": "synced"},
         StatusCode.UNSET),
        ("work tr-crate", {**common, "delta.id": "broken", "delta.attempt": 1,
          "delta.handler": "work", "delta.generation": 1, "delta.outcome": "failed"},
         StatusCode.ERROR),
        ("work tr-crate", {**common, "delta.id": "broken", "delta.attempt": 2,
          "delta.handler": "work", "delta.generation": 1, "delta.outcome": "degraded"},
         StatusCode.ERROR),
        ("finalize tr-crate", {**common, "delta.id": "c1", "delta.attempt": 1,
          "delta.handler": "finalize", "delta.generation": 2, "delta.outcome": "deleted"},
         StatusCode.UNSET),
    ]  # fmt: skip


class Flaky(delta.Job, kind="tr-flaky"):
    pass


async def flaky(job: Flaky) -> None:
    raise RuntimeError("the printer is out of paper")


def test_a_plain_jobs_last_failed_attempt_says_discarded(dsn, spans):
    """A plain job's failed attempts are `failed` until its last, which discards it."""
    app = delta.App(jobs={Flaky: flaky})
    with delta.Client.connect(dsn, app=app) as client:
        runner = Runner(app, client, retry_policy=lambda attempt: 60.0)
        job = client.enqueue(Flaky(), max_attempts=2)
        runner.run_until_idle()
        runner.advance(60.0)
        assert client.get_job(job.id).state == delta.JobState.DISCARDED
    outcomes = [
        (dict(span.attributes or {})["delta.attempt"], dict(span.attributes or {})["delta.outcome"])
        for span in spans.named("job ")
    ]
    assert outcomes == [(1, "failed"), (2, "discarded")]


async def test_without_a_recording_span_no_context_is_written(dsn):
    """The API installed, no SDK recording (this process outside `spans`): NULL metadata."""
    async with await delta.AsyncClient.connect(dsn) as client:
        await client.inform(Parcel(key="p1"))
    assert _metadata(dsn) == [None]


ABSENT = """
import sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
import delta_actors as delta
from delta_actors import tracing
from tests.objects import Keyed
class Parcel(Keyed, kind="tr-parcel"):
    pass
class ParcelController(delta.Controller[Parcel]):
    async def work(self, resource):
        return None
assert tracing.ENABLED is False
assert delta.App(controllers=[ParcelController()]).middleware == ()
assert "opentelemetry.trace" not in sys.modules
with delta.Client.connect(sys.argv[1]) as client:
    print(client.inform(Parcel(key="p1")).outcome.value)
"""


def test_without_the_extra_there_is_no_tracing_middleware_and_nothing_written(dsn):
    done = subprocess.run(
        [sys.executable, "-c", ABSENT, dsn], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "created"
    assert _metadata(dsn) == [None]


def test_the_trace_context_is_json_of_w3c_fields(dsn, spans):
    with delta.Client.connect(dsn) as client:
        client.inform(Parcel(key="p1"))
    (stored,) = _metadata(dsn)
    version, trace_id, span_id, flags = stored["traceparent"].split("-")
    (inform,) = spans.named("inform ")
    assert (int(trace_id, 16), int(span_id, 16)) == (
        inform.context.trace_id, inform.context.span_id,
    )  # fmt: skip
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert json.loads(json.dumps(stored)) == stored


UNCONFIGURED = """
import delta_actors as delta
from delta_actors import tracing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

async def own(call, proceed):
    await proceed()

app = delta.App(middleware=[own])
assert tracing.ENABLED and not tracing.recording()  # what each claim asks
assert [wrap.function for wrap in app.chain(False)] == [own]  # its runs: no work span
trace.set_tracer_provider(TracerProvider())  # an app configures its SDK after importing us
assert tracing.recording()
assert [wrap.function for wrap in app.chain(True)] == [tracing.trace_run, own]
print("ok")
"""


def test_with_the_api_but_no_sdk_runs_skip_the_work_span_until_one_is_configured():
    """OpenTelemetry's proxy provider makes only no-op spans: the runs' chain leaves the
    work span out (what it cost the drain: docs/performance.md), and claims take it in
    once the application sets a provider."""
    done = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

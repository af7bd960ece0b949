"""OpenTelemetry spans, when `opentelemetry-api` is installed (the `otel` extra).

Spans (instrumentation scope "delta_actors"; attributes prefixed `delta.`):

    inform KIND       PRODUCER  an inform or inform_many call (`_tx` too): kind, namespace,
                                count, id and outcome (one object) or outcome counts
    enqueue KIND      PRODUCER  an enqueue or enqueue_many call (`_tx` too): kind,
                                namespace, count, the job's id (one), duplicates
    work KIND         CONSUMER  one run of a work, finalize or plain job (`finalize KIND`,
    finalize KIND               `job KIND`): kind, id, namespace, generation, attempt,
    job KIND                    handler and outcome; a child of the span that queued it
    informer KIND     INTERNAL  one informer run in the leader: kind, full, objects
    claim NAMESPACE   INTERNAL  one claim that claimed something: namespace, limit, claimed

Invariants:
- Without the extra, `ENABLED` is False, decided once at import: every call site reads
  that flag before doing anything else, the work middleware is not installed, and no
  byte is added to any row. With it installed but no SDK configured (OpenTelemetry's
  global tracer provider still its proxy or a no-op one), `recording()` is False: runs
  leave the work middleware out of their chain (App.chain) and claims make no span: what
  is left is that check, once per claim statement (it costs 2 us, OpenTelemetry's lookup
  reading the environment); informs make no span either. Configured later (an app sets
  its provider after importing us), spans start with the next claim.
- The trace context of an inform crosses processes in the queued work's row: when the
  inform runs inside a recording span, WRITE_RESOURCES stores that span's W3C context
  (`traceparent`, `tracestate`, through the global propagator) in `delta_job.metadata`
  (migration 15), and the run, claimed in any process, starts its span as that span's
  child. A work folded into a queued one takes the newer inform's context. Informer runs
  are parents of the works they queue the same way, and an enqueue's span of the jobs it
  queues (every insert path: one row, unnest, COPY).
- The work span is a middleware (middleware.py), the first of the App's, so it sees
  every outcome, the user's middleware included.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from delta_actors.middleware import Call, Proceed, Wrap
from delta_actors.model.job_row import EnqueuedJob
from delta_actors.model.resource import InformResult
from delta_actors.outcomes import Cancel, Delete, PermanentError, Requeue

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError:  # the extra is not installed: everything below stays unused
    ENABLED = False
else:
    ENABLED = True
    _tracer = trace.get_tracer("delta_actors")
    _NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

_FAILED = frozenset({"failed", "timeout", "degraded", "discarded"})


class _Identified(Protocol):
    kind: str
    object_id: str
    namespace: str


def recording() -> bool:
    """Whether spans can record now: the extra is installed and a tracer provider other
    than OpenTelemetry's proxy or no-op one is set (an SDK's). About 2 us (the lookup
    reads the environment until a provider is set): asked per claim, never per run."""
    return ENABLED and not isinstance(trace.get_tracer_provider(), _NO_SDK)


def middleware() -> tuple[Wrap, ...]:
    """The work span's middleware, first of every App's; none without the extra."""
    return (Wrap(trace_run, wraps=True),) if ENABLED else ()


def carrier() -> str | None:
    """The current span's trace context as JSON, if a span is recording; else None."""
    if not ENABLED or not trace.get_current_span().is_recording():
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return json.dumps(headers) if headers else None


@contextmanager
def inform_span(items: Sequence[_Identified]) -> Iterator[Span]:
    """The span of one inform call (only with ENABLED); see `inform_done`."""
    first = items[0]
    one = {"delta.id": first.object_id} if len(items) == 1 else {}
    with _producer_span(
        "inform", [item.kind for item in items], first.namespace, len(items), one
    ) as span:
        yield span


@contextmanager
def enqueue_span(kinds: Sequence[str], namespaces: Sequence[str]) -> Iterator[Span]:
    """The span of one enqueue call (only with ENABLED); see `enqueue_done`."""
    with _producer_span("enqueue", kinds, namespaces[0], len(kinds), {}) as span:
        yield span


@contextmanager
def _producer_span(
    verb: str, kinds: Sequence[str], namespace: str, count: int, extra: dict[str, Any]
) -> Iterator[Span]:
    distinct = set(kinds)
    kind = kinds[0] if len(distinct) == 1 else ",".join(sorted(distinct))
    attributes: dict[str, Any] = {
        "delta.kind": kind, "delta.namespace": namespace, "delta.count": count, **extra,
    }  # fmt: skip
    with _tracer.start_as_current_span(
        f"{verb} {kind}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def enqueue_done(span: Span, jobs: Sequence[EnqueuedJob]) -> None:
    """Record what the enqueue did on its span: the job's id (one), duplicates."""
    if len(jobs) == 1:
        span.set_attribute("delta.id", jobs[0].id)
    duplicates = sum(job.duplicate for job in jobs)
    if duplicates:
        span.set_attribute("delta.duplicates", duplicates)


def inform_done(span: Span | None, results: Sequence[InformResult[Any]]) -> None:
    """Record what the inform did on its span."""
    if span is None or not span.is_recording():
        return
    if len(results) == 1:
        span.set_attribute("delta.outcome", results[0].outcome.value)
        return
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    for outcome, count in counts.items():
        span.set_attribute(f"delta.outcome.{outcome}", count)


@contextmanager
def informer_span(kind: str, full: bool) -> Iterator[Span]:
    """The span of one informer run (only with ENABLED)."""
    attributes: dict[str, Any] = {"delta.kind": kind, "delta.full": full}
    with _tracer.start_as_current_span(f"informer {kind}", attributes=attributes) as span:
        yield span


def record_failure(span: Span, exc: BaseException) -> None:
    """Mark `span` failed by `exc`."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))


def record_claim(namespace: str, limit: int, claimed: int, start_ns: int) -> None:
    """A span for one claim that claimed something, from `start_ns` (time.time_ns()) to now.

    Made afterwards, so that the claims of an idle worker (one a second) make none.
    """
    span = _tracer.start_span(
        f"claim {namespace}", start_time=start_ns,
        attributes={"delta.namespace": namespace, "delta.limit": limit,
                    "delta.claimed": claimed},
    )  # fmt: skip
    span.end()


async def trace_run(call: Call, proceed: Proceed) -> None:
    """The middleware of the work span: a child of the context the run's row carries."""
    parent = propagate.extract(call.trace_context) if call.trace_context else None
    span = _tracer.start_span(f"{call.handler} {call.kind}", context=parent, kind=SpanKind.CONSUMER)
    if not span.is_recording():
        # No SDK configured (or not sampled): the span is a no-op; skip the rest of it,
        # attributes and context switch, which cost more than the no-op run itself.
        await proceed()
        return
    span.set_attributes({
        "delta.kind": call.kind, "delta.id": call.id, "delta.namespace": call.namespace,
        "delta.attempt": call.attempt, "delta.handler": call.handler,
    })  # fmt: skip
    if call.generation is not None:
        span.set_attribute("delta.generation", call.generation)
    with trace.use_span(span, end_on_exit=True, record_exception=False,
                        set_status_on_exception=False):  # fmt: skip
        try:
            await proceed()
        except BaseException as exc:
            outcome = outcome_of(call, exc)
            span.set_attribute("delta.outcome", outcome)
            if outcome in _FAILED:
                record_failure(span, exc)
            raise
        span.set_attribute("delta.outcome", _RETURNED[call.handler])


_RETURNED = {"work": "synced", "finalize": "deleted", "job": "completed"}


def outcome_of(call: Call, exc: BaseException) -> str:
    """What a run that raised `exc` comes to (reconciler.py and runner.py decide it)."""
    is_job = call.handler == "job"
    if isinstance(exc, Requeue):
        return "requeued"
    if isinstance(exc, Delete) and not is_job:
        return "deleted"
    if isinstance(exc, PermanentError):
        return "discarded" if is_job else "degraded"
    if isinstance(exc, Cancel) and is_job:
        return "cancelled"
    if isinstance(exc, asyncio.CancelledError):
        return "handed_back"  # the worker stops: the claim goes back, uncounted
    # Its last attempt (a timeout too): COMPLETE_WORKS degrades the resource, as
    # Reconciler._failed says, and a plain job is discarded, as JobRunner._failed says;
    # the span's exception says what failed.
    resource = call.resource
    if resource is not None and call.attempt >= resource.max_attempts:
        return "degraded"
    if is_job and call.max_attempts and call.attempt >= call.max_attempts:
        return "discarded"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "failed"

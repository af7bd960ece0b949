"""Prometheus metrics: counted in the actors, summed and served by the supervisor.

Protocol (see also protocol.py):

- An actor counts each run it finishes in a `Recorder`: per (kind, result) a counter, per
  kind a histogram of durations over the fixed `BUCKETS`. Counting is two dict lookups
  and a bisect; nothing is sent per run.
- Every Heartbeat carries the Recorder's totals since the actor started (`KindTally`
  list), the actor's gauges (running works, slots, queue depth and lag of its namespace)
  and, from the leader candidate, its election and rescue counters.
- The supervisor keeps the last Heartbeat of each live actor and, when an actor ends, adds
  its last counters to the totals of the ended ones (`SupervisorMetrics.actor_ended`). A
  scrape sums the two under one lock, so counters never go backwards across restarts; runs
  counted after an actor's last heartbeat and before a crash are not counted (their works
  are rescued and run again, and counted then).
- `serve()` answers scrapes from a thread of the supervisor with a registry of its own
  (never the global one), bound to 127.0.0.1 unless told otherwise. The collector only
  reads what the supervisor loop wrote, under the lock; it never touches the database.

Names follow controller-runtime where a metric means the same thing
(`controller_runtime_reconcile_total` -> `delta_reconcile_total`, ...); docs/operations.md
lists them all.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from delta_actors.queue.results import Result, WorkResult
from delta_actors.runtime.protocol import Heartbeat, KindTally

# Upper bounds in seconds of the run duration histograms; one more bucket counts the rest.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

ERROR_RESULTS = frozenset({"error", "degraded", "discarded"})


def result_label(result: Result) -> str:
    """Name the outcome of one run for the `result` label (queue/results.py decides it)."""
    return result.ending


@dataclass(slots=True)
class _Tally:
    results: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0

    def add(self, tally: KindTally) -> None:
        for result, count in tally.results.items():
            self.results[result] = self.results.get(result, 0) + count
        for index, count in enumerate(tally.buckets[: len(self.buckets)]):
            self.buckets[index] += count
        self.seconds += tally.seconds


class Recorder:
    """Counts the runs of one actor, per kind; snapshots travel in Heartbeats."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[bool, str], _Tally] = {}

    def observe(self, kind: str, result: Result, seconds: float) -> None:
        """Count one finished run of `kind` that took `seconds`."""
        key = (type(result) is WorkResult, kind)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        label = result_label(result)
        tally.results[label] = tally.results.get(label, 0) + 1
        tally.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        tally.seconds += seconds

    def snapshot(self) -> list[KindTally]:
        """Return the totals so far, one KindTally per kind."""
        return [
            KindTally(kind, is_work, dict(t.results), list(t.buckets), t.seconds)
            for (is_work, kind), t in self._tallies.items()
        ]


@dataclass(slots=True)
class _Live:
    namespace: str
    heartbeat: Heartbeat | None = None
    seen_at: float = 0.0  # monotonic time of the last heartbeat


@dataclass(slots=True)
class _Totals:
    tallies: dict[tuple[str, bool, str], _Tally] = field(default_factory=dict)
    rescued: dict[str, int] = field(default_factory=lambda: {"leader": 0, "supervisor": 0})
    elected: int = 0
    lost: int = 0
    informer_runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, result)
    informer_success: dict[str, float] = field(default_factory=dict)  # kind -> epoch s

    def add(self, namespace: str, heartbeat: Heartbeat) -> None:
        for tally in heartbeat.kinds:
            key = (namespace, tally.is_work, tally.kind)
            if key not in self.tallies:
                self.tallies[key] = _Tally()
            self.tallies[key].add(tally)
        self.rescued["leader"] += heartbeat.rescued
        self.elected += heartbeat.elected
        self.lost += heartbeat.lost
        for informer in heartbeat.informers:
            for result, count in informer.results.items():
                run_key = (informer.kind, result)
                self.informer_runs[run_key] = self.informer_runs.get(run_key, 0) + count
            if informer.last_success is not None:
                known = self.informer_success.get(informer.kind, 0.0)
                self.informer_success[informer.kind] = max(known, informer.last_success)

    def copy(self) -> _Totals:
        copied = _Totals(
            rescued=dict(self.rescued), elected=self.elected, lost=self.lost,
            informer_runs=dict(self.informer_runs), informer_success=dict(self.informer_success),
        )  # fmt: skip
        for key, tally in self.tallies.items():
            copied.tallies[key] = _Tally(dict(tally.results), list(tally.buckets), tally.seconds)
        return copied


class SupervisorMetrics(Collector):
    """What the supervisor knows of its actors, as Prometheus metrics (a custom collector).

    The supervisor loop calls the `actor_*` and `rescued` methods; scrapes call `collect`
    from the HTTP thread. One lock covers both, held only to copy a few dicts.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._ended = _Totals()
        self._starts: dict[str, int] = {}
        self._now = now

    def actor_started(self, actor: str, namespace: str) -> None:
        """A process for slot `actor` was forked."""
        with self._lock:
            self._starts[actor] = self._starts.get(actor, 0) + 1
            self._live[actor] = _Live(namespace, seen_at=self._now())

    def actor_heartbeat(self, actor: str, heartbeat: Heartbeat) -> None:
        """The live process of slot `actor` sent `heartbeat`."""
        with self._lock:
            live = self._live.get(actor)
            if live is not None:
                live.heartbeat = heartbeat
                live.seen_at = self._now()

    def actor_ended(self, actor: str) -> None:
        """The process of slot `actor` exited: keep its counters, drop its gauges."""
        with self._lock:
            live = self._live.pop(actor, None)
            if live is not None and live.heartbeat is not None:
                self._ended.add(live.namespace, live.heartbeat)

    def rescued(self, claims: int) -> None:
        """The supervisor itself returned `claims` of a dead actor to work."""
        with self._lock:
            self._ended.rescued["supervisor"] += claims

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by prometheus_client on each scrape)."""
        with self._lock:
            totals = self._ended.copy()
            live = {name: (a.namespace, a.heartbeat, a.seen_at) for name, a in self._live.items()}
            starts = dict(self._starts)
            now = self._now()
        for namespace, heartbeat, _ in live.values():
            if heartbeat is not None:
                totals.add(namespace, heartbeat)
        yield from _run_families(totals)
        yield from _queue_families(live)
        yield from _actor_families(live, starts, now)
        yield from _leader_families(totals, live)
        yield from _cluster_families(live)


def _run_families(totals: _Totals) -> Iterator[Metric]:
    for is_work, noun in ((True, "reconcile"), (False, "job")):
        what = "resource works (reconciles)" if is_work else "plain jobs"
        runs = CounterMetricFamily(
            f"delta_{noun}", f"Finished {what} by result.", labels=["namespace", "kind", "result"]
        )
        errors = CounterMetricFamily(
            f"delta_{noun}_errors",
            f"Finished {what} that failed (results {', '.join(sorted(ERROR_RESULTS))}).",
            labels=["namespace", "kind"],
        )
        times = HistogramMetricFamily(
            f"delta_{noun}_time_seconds",
            f"Duration of {what} in seconds.",
            labels=["namespace", "kind"],
        )
        for (namespace, tally_is_work, kind), tally in sorted(totals.tallies.items()):
            if tally_is_work is not is_work:
                continue
            for result, count in sorted(tally.results.items()):
                runs.add_metric([namespace, kind, result], count)
            failed = sum(c for r, c in tally.results.items() if r in ERROR_RESULTS)
            errors.add_metric([namespace, kind], failed)
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), tally.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            times.add_metric([namespace, kind], buckets, tally.seconds)
        yield from (runs, errors, times)


def _queue_families(live: dict[str, tuple[str, Heartbeat | None, float]]) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "delta_queue_depth", "Works and jobs available now (capped at 100000).",
        labels=["namespace"],
    )  # fmt: skip
    lag = GaugeMetricFamily(
        "delta_queue_lag_seconds",
        "Seconds the oldest available work or job has been due.",
        labels=["namespace"],
    )
    active = GaugeMetricFamily(
        "delta_active_workers", "Works and jobs running now.", labels=["namespace"]
    )
    slots = GaugeMetricFamily(
        "delta_max_workers", "Works and jobs that may run at once.", labels=["namespace"]
    )
    per_namespace: dict[str, list[Heartbeat]] = {}
    for namespace, heartbeat, _ in live.values():
        if heartbeat is not None and heartbeat.max_workers:
            per_namespace.setdefault(namespace, []).append(heartbeat)
    for namespace, beats in sorted(per_namespace.items()):
        # Every process of a namespace measures the same queue: report it once.
        depth.add_metric([namespace], max(b.queue_depth for b in beats))
        lag.add_metric([namespace], max(b.queue_lag for b in beats))
        active.add_metric([namespace], sum(b.running for b in beats))
        slots.add_metric([namespace], sum(b.max_workers for b in beats))
    yield from (depth, lag, active, slots)


def _actor_families(
    live: dict[str, tuple[str, Heartbeat | None, float]], starts: dict[str, int], now: float
) -> Iterator[Metric]:
    restarts = CounterMetricFamily(
        "delta_actor_restarts", "Times the supervisor restarted an actor.", labels=["actor"]
    )
    for actor, count in sorted(starts.items()):
        restarts.add_metric([actor], count - 1)
    age = GaugeMetricFamily(
        "delta_actor_heartbeat_age_seconds",
        "Seconds since the actor's last heartbeat reached the supervisor.",
        labels=["actor"],
    )
    up = GaugeMetricFamily(
        "delta_actor_up", "1 while the actor process runs, 0 while it waits for a restart.",
        labels=["actor"],
    )  # fmt: skip
    progress = GaugeMetricFamily(
        "delta_component_seconds_since_progress",
        "Seconds since a component of the actor (a leader duty, a worker's claims, results "
        "or listener) last got something done; 0 while it has nothing to do.",
        labels=["actor", "component"],
    )
    for actor in sorted(starts):
        entry = live.get(actor)
        up.add_metric([actor], 1 if entry is not None else 0)
        if entry is not None:
            age.add_metric([actor], max(0.0, now - entry[2]))
        heartbeat = entry[1] if entry is not None else None
        for component in heartbeat.health if heartbeat is not None else ():
            progress.add_metric([actor, component.name], component.since_progress)
    yield from (restarts, age, up, progress)


def _leader_families(
    totals: _Totals, live: dict[str, tuple[str, Heartbeat | None, float]]
) -> Iterator[Metric]:
    rescued = CounterMetricFamily(
        "delta_rescued_claims",
        "Claims of dead actors returned to work, by who rescued them.",
        labels=["by"],
    )
    for by, count in sorted(totals.rescued.items()):
        rescued.add_metric([by], count)
    transitions = CounterMetricFamily(
        "delta_leader_transitions",
        "Leader terms won (elected) and lost or given up (lost) by this supervisor's leader.",
        labels=["transition"],
    )
    transitions.add_metric(["elected"], totals.elected)
    transitions.add_metric(["lost"], totals.lost)
    is_leader = GaugeMetricFamily(
        "delta_is_leader", "1 while this supervisor's leader candidate holds the lease."
    )
    is_leader.add_metric([], int(any(h is not None and h.is_leader for _, h, _ in live.values())))
    runs = CounterMetricFamily(
        "delta_informer_runs",
        "Informer runs by this supervisor's leader candidate, by kind and result "
        "(success, error: a failed or timed-out run).",
        labels=["kind", "result"],
    )
    for (kind, result), count in sorted(totals.informer_runs.items()):
        runs.add_metric([kind, result], count)
    last_success = GaugeMetricFamily(
        "delta_informer_last_success_timestamp_seconds",
        "When each kind's informer last ran without error (any leader; as the database "
        "records it, seen by this supervisor's leader candidate).",
        labels=["kind"],
    )
    for kind, at in sorted(totals.informer_success.items()):
        last_success.add_metric([kind], at)
    yield from (rescued, transitions, is_leader, runs, last_success)


def _cluster_families(live: dict[str, tuple[str, Heartbeat | None, float]]) -> Iterator[Metric]:
    """The leader's reading of the cluster (leader/gauges.py), from this supervisor's
    leader candidate while it leads; other supervisors report none."""
    resources = GaugeMetricFamily(
        "delta_resources",
        "Resources by kind and stored state (failed and degraded counted every 15 s, the "
        "rest every minute), as the leader read them.",
        labels=["kind", "state"],
    )
    paused = GaugeMetricFamily(
        "delta_namespace_paused", "1 for each paused namespace (delta-actors pause).",
        labels=["namespace"],
    )  # fmt: skip
    waiting = GaugeMetricFamily(
        "delta_limited_waiting",
        "Works and jobs of a kind with a concurrency or rate limit waiting to run now "
        "(capped at 100000).",
        labels=["kind"],
    )
    for _, heartbeat, _ in live.values():
        cluster = heartbeat.cluster if heartbeat is not None else None
        if cluster is None:
            continue
        for kind, state, count in cluster.resources:
            resources.add_metric([kind, state], count)
        for namespace in cluster.paused:
            paused.add_metric([namespace], 1)
        for kind, count in cluster.limited_waiting:
            waiting.add_metric([kind], count)
        break  # one leader candidate per supervisor
    yield from (resources, paused, waiting)


def serve(metrics: SupervisorMetrics, host: str, port: int) -> WSGIServer:
    """Serve `metrics` on http://host:port/metrics from a daemon thread; return the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server

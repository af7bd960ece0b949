"""Liveness of the leader's duties throughout a fault-injection run (see class Liveness)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from chaos_app import (
    LEASE_TTL,
    LIVENESS_BOUND,
    PROBE_DELAY,
    PROBE_INTERVAL,
    SAMPLE_INTERVAL,
    Probe,
    app,
)  # fmt: skip
from chaos_checks import LEADER_CONNS, Fault, _clock, _spread, _within

import delta_actors as delta

# One sample: the lease, the newest informer run, and the most overdue job that waits
# for promotion (scheduled or retryable, due, not yet available: the leader's Promoter).
# A job is overdue from when it was both due and visible: a row committed after its
# scheduled_at (a result, or an effect's job, whose transaction a slow link held open for
# seconds) was nobody's to promote before its commit. The commit time of the row version
# is known where the server tracks commit timestamps (the harness's own cluster does);
# elsewhere the clock starts at scheduled_at, stricter than the leader deserves.
WAITING_SINCE = {
    True: "greatest(scheduled_at, pg_xact_commit_timestamp(xmin))",
    False: "scheduled_at",
}
SAMPLE_LIVENESS = """
SELECT l.actor_id, l.term, l.expires_at > now(),
       (SELECT max(started_at) FROM chaos_informer_run),
       (SELECT extract(epoch FROM now() - min({since}))::float8 FROM delta_job
        WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now())
FROM (SELECT 1) AS one LEFT JOIN delta_leader AS l ON l.name = 'default'
"""
COMMIT_TIMESTAMPS = "SELECT current_setting('track_commit_timestamp')::bool"

# ------------------------------------------------------------------------- liveness


@dataclass
class Sample:
    at: float  # time.time()
    lease: tuple[int, int] | None  # (actor id, term) of an unexpired lease; None: no leader
    informer_age: float  # seconds since the newest informer run started
    promotion_delay: float  # seconds the most overdue unpromoted job is past due and
    # visible (committed); 0: none


class Liveness:
    """Leader duties throughout the run: informers on schedule, due jobs promoted.

    The app's `beacon` informer (every INFORM_INTERVAL) records each run's start, and a
    probe job is enqueued every PROBE_INTERVAL, PROBE_DELAY ahead, so there is always a
    scheduled job for the leader to promote. A sampler reads, every SAMPLE_INTERVAL, the
    lease, the age of the newest informer run, and how long the most overdue job still
    waiting for promotion (scheduled or retryable) has been both due and committed (see
    SAMPLE_LIVENESS; `commit_timestamps` in the report says which clock was used).

    A sample breaks the bound when its informer gap or promotion delay exceeds
    LIVENESS_BOUND while one (actor, term) has held an unexpired lease for longer than
    the bound: both are counted from the moment the sampler first saw that term. Not
    checked are samples without an unexpired lease, and samples in the windows where
    the leader itself was a victim (its actor or its supervisor SIGKILLed, PostgreSQL
    restarted), from the fault until its end plus one lease TTL: duties stop there until
    the lease expires and another candidate takes over. Connection kills are not
    excluded: a burst on the leader's own connections (its pool, its lease connection)
    may stop the duties while it lasts, but they must be back within the bound after it
    ends (gaps count from its end); the runtime has to heal its pools and restart its
    duties. Every other connection kill (workers', `terminate_backends`) gets nothing.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[Sample] = []
        self.probes_enqueued = 0
        # The sampler's and the prober's loops survive any exception. The database's
        # errors are the faults at work (reconnect, try again); any other is the
        # harness's own bug, kept here and reported as a violation.
        self.database_errors = {"sampler": 0, "prober": 0}
        self.harness_errors: list[str] = []
        self.commit_timestamps: bool | None = None  # known once the sampler connected
        self.started = time.time()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.sample, daemon=True),
            threading.Thread(target=self.enqueue_probes, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def sample(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stop.wait(SAMPLE_INTERVAL):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.dsn, autocommit=True, connect_timeout=5,
                        application_name="chaos-sampler",
                    )  # fmt: skip
                self.samples.append(self.read(conn))
            except Exception as exc:  # noqa: BLE001 (counted or reported; the loop goes on)
                self._failed("sampler", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def read(self, conn: psycopg.Connection) -> Sample:
        """One sample, read now on `conn`."""
        if self.commit_timestamps is None:
            tracked = conn.execute(COMMIT_TIMESTAMPS).fetchone()
            self.commit_timestamps = bool(tracked and tracked[0])
        since = WAITING_SINCE[self.commit_timestamps]
        row = conn.execute(SAMPLE_LIVENESS.format(since=since)).fetchone()  # type: ignore[arg-type]
        assert row is not None
        actor_id, term, unexpired, informed_at, overdue = row
        at = time.time()
        return Sample(
            at,
            (actor_id, term) if unexpired else None,
            at - (informed_at or self.started),
            max(0.0, overdue or 0.0),
        )

    def enqueue_probes(self) -> None:
        client: delta.Client | None = None
        while not self.stop.wait(PROBE_INTERVAL):
            due = datetime.now(UTC) + timedelta(seconds=PROBE_DELAY)
            try:
                client = client or delta.Client.connect(self.dsn, app=app)
                client.enqueue(Probe(due.timestamp()), namespace="alpha", scheduled_at=due)
            except Exception as exc:  # noqa: BLE001 (counted or reported; the loop goes on)
                self._failed("prober", exc)
                continue  # the next one comes in a second
            self.probes_enqueued += 1
        if client is not None:
            client.close()

    def _failed(self, loop: str, exc: Exception) -> None:
        if isinstance(exc, (psycopg.Error, delta.DatabaseError)):
            self.database_errors[loop] += 1
        else:
            self.harness_errors.append(f"{loop}: {exc!r}")

    def check(self, faults: list[Fault], query: Any) -> tuple[dict[str, Any], list[str]]:
        """The liveness section of the report, and its violations."""
        outages = [(f.at, f.end + LEASE_TTL) for f in faults if f.stops_leader]
        bursts = [(f.at, f.end) for f in faults if f.kind in LEADER_CONNS]
        checked = _checked_samples(self.samples, outages, bursts)
        violations = _liveness_violations(checked, faults)
        violations += [f"liveness {error}" for error in self.harness_errors]
        probes = [
            started - due
            for due, started in query("SELECT due_at, started_at FROM chaos_probe_run")
        ]
        informer = sorted(c[1] for c in checked)
        promotion = sorted(c[2] for c in checked)
        section = {
            "bound_s": LIVENESS_BOUND,
            "commit_timestamps": self.commit_timestamps,
            "samples": len(self.samples),
            "samples_checked": len(checked),
            "samples_without_lease": sum(1 for s in self.samples if s.lease is None),
            "samples_in_leader_outages": sum(
                1 for s in self.samples if s.lease and _within(s.at, outages)
            ),
            "samples_in_leader_bursts": sum(
                1 for s in self.samples if s.lease and _within(s.at, bursts)
            ),
            **_spread("informer_gap", informer),
            **_spread("promotion_delay", promotion),
            "all_samples": {
                **_spread("informer_gap", sorted(s.informer_age for s in self.samples)),
                **_spread("promotion_delay", sorted(s.promotion_delay for s in self.samples)),
            },
            "by_fault": _liveness_by_fault(checked, faults),
            "probes_enqueued": self.probes_enqueued,
            "probe_runs": len(probes),
            **_spread("probe_start_delay", sorted(probes)),
            "database_errors": dict(self.database_errors),
            "harness_errors": list(self.harness_errors),
            "violations": len(violations),
        }
        return section, violations


Checked = tuple[Sample, float, float]  # a sample, its informer gap and promotion delay


def _checked_samples(
    samples: list[Sample], outages: list[tuple[float, float]], bursts: list[tuple[float, float]]
) -> list[Checked]:
    """Samples under an unexpired lease, outside leader outages and bursts, gaps cut.

    A gap counts from the latest of its own start, the moment the term was first seen (a
    new leader is not blamed for what happened before it led) and the end of the last
    burst on the leader's connections (the duties must be back within the bound after it).
    """
    checked = []
    held: tuple[int, int] | None = None
    since = 0.0
    for sample in samples:
        if sample.lease != held:
            held, since = sample.lease, sample.at
        if held is None or _within(sample.at, outages) or _within(sample.at, bursts):
            continue
        ended = [end for _, end in bursts if end <= sample.at]
        clock = sample.at - max([since, *ended])
        checked.append(
            (sample, min(sample.informer_age, clock), min(sample.promotion_delay, clock))
        )
    return checked


def _liveness_violations(checked: list[Checked], faults: list[Fault]) -> list[str]:
    """One line per episode (consecutive samples) of a gap past the bound."""
    found = []
    for index, what in ((1, "informer gap"), (2, "promotion delay")):
        episode: list[Checked] = []
        for entry in [*checked, None]:
            if entry is not None and entry[index] > LIVENESS_BOUND:  # type: ignore[operator]
                episode.append(entry)
                continue
            if episode:
                found.append(_describe_episode(what, index, episode, faults))
                episode = []
    return found


def _describe_episode(what: str, index: int, episode: list[Checked], faults: list[Fault]) -> str:
    first, last = episode[0], episode[-1]
    began = first[0].at - first[index]
    during = [f"{f.kind} at {_clock(f.at)}" for f in faults if began - 1.0 <= f.at <= last[0].at]
    assert first[0].lease is not None
    return (
        f"{what} of {last[index]:.1f}s (bound {LIVENESS_BOUND:g}s) at {_clock(last[0].at)}"
        f" (since {_clock(began)}) while actor {first[0].lease[0]} held term"
        f" {first[0].lease[1]}; faults then: {', '.join(during) or 'none'}"
    )


def _liveness_by_fault(checked: list[Checked], faults: list[Fault]) -> dict[str, dict[str, float]]:
    """Per fault kind: the worst checked informer gap and promotion delay in its windows.

    A fault's window runs from its start to its end plus the bound.
    """
    worst: dict[str, dict[str, float]] = {}
    for fault in faults:
        entry = worst.setdefault(
            fault.kind, {"informer_gap_max_s": 0.0, "promotion_delay_max_s": 0.0}
        )
        for sample, informer, promotion in checked:
            if fault.at <= sample.at <= fault.end + LIVENESS_BOUND:
                entry["informer_gap_max_s"] = round(max(entry["informer_gap_max_s"], informer), 2)
                entry["promotion_delay_max_s"] = round(
                    max(entry["promotion_delay_max_s"], promotion), 2
                )
    return worst

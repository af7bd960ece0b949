"""Sustained load: steady enqueue and drain for `--minutes`, cleanup at a short retention.

On a throwaway cluster with autovacuum at its defaults, `--rate` no-op plain jobs per
second are enqueued (batches every 20 ms, each job carrying its enqueue time) and drained
by one `delta-actors supervise` at concurrency 100, its namespace keeping completed jobs
`--retention` seconds (the leader's cleaner runs every 60 s). Reported per minute:

- enqueued/s and started/s, and the backlog (jobs available, not yet claimed) at its end;
- enqueue-to-start lag: each run measures its own (time.time() of this one machine) and
  its actor flushes every 10 s the window's count, p50 and p99 to `bench_lag`; a
  minute's p50 is the median of its windows', its p99 the worst window's;
- `delta_job`'s rows, dead row versions, table and index sizes (sampled every 10 s).

The job table should settle at about rate x (retention + the cleaner's interval) rows
and stay there; the last line compares the second half of the run with the first.
Capacity: run `--minutes 1` at a few rates and take the highest whose backlog stays
flat; the issue's run is at 70 % of it.

Usage: python scripts/bench_sustained.py [--minutes 30] [--rate 7000] [--retention 60]
       [--out bench-results/sustained.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from benchlib import migrated_cluster, wait_registered

import delta_actors as delta

TICK = 0.02  # seconds between enqueue batches
WINDOW = 10.0  # seconds per lag window flushed by the actor
RETENTION = float(os.environ.get("BENCH_RETENTION", "60"))


class Stamped(delta.Job, kind="stamped"):
    sent_at: float


class _Lags:
    """This actor process's lags, flushed to `bench_lag` every WINDOW seconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lags: list[float] = []
        self.pid = 0

    def add(self, lag: float) -> None:
        with self.lock:
            if self.pid != os.getpid():  # first run in this (forked) process
                self.pid = os.getpid()
                self.lags = []
                threading.Thread(target=self._flush, daemon=True, name="lags").start()
            self.lags.append(lag)

    def _flush(self) -> None:
        with psycopg.connect(os.environ["DELTA_DATABASE_URL"], autocommit=True) as conn:
            while True:
                time.sleep(WINDOW)
                with self.lock:
                    lags, self.lags = self.lags, []
                if not lags:
                    continue
                lags.sort()
                conn.execute(
                    "INSERT INTO bench_lag (at, n, p50_ms, p99_ms) VALUES (%s, %s, %s, %s)",
                    (time.time(), len(lags), lags[len(lags) // 2] * 1000,
                     lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000),
                )  # fmt: skip


_lags = _Lags()


async def stamped(job: Stamped) -> None:
    _lags.add(time.time() - job.sent_at)


app = delta.App(
    jobs={Stamped: stamped},
    namespaces={
        "default": delta.Namespace(max_workers=100, completed_retention=RETENTION),
    },
)


def produce(dsn: str, seconds: float, rate: float, sent: list[int]) -> None:
    """Enqueue `rate` jobs per second for `seconds`; sent[m]: jobs enqueued in minute m."""
    per_tick = rate * TICK
    owed = 0.0
    with delta.Client.connect(dsn) as client:
        started = time.perf_counter()
        next_at = started
        while (now := time.perf_counter()) - started < seconds:
            owed += per_tick
            n, owed = int(owed), owed - int(owed)
            if n:
                stamp = time.time()
                client.enqueue_many([Stamped(sent_at=stamp) for _ in range(n)])
                sent[int((now - started) // 60)] += n
            next_at += TICK
            time.sleep(max(0.0, next_at - now))


def sample_table(dsn: str, stop: threading.Event, out: list[dict[str, float]]) -> None:
    """Every 10 s: delta_job's rows, dead versions, table and index sizes, and the jobs
    waiting to be claimed."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(10.0):
            row = conn.execute(
                "SELECT (SELECT count(*) FROM delta_job),"
                " (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'delta_job'),"
                " pg_table_size('delta_job'), pg_indexes_size('delta_job'),"
                " (SELECT count(*) FROM delta_job WHERE state = 'available')"
            ).fetchone()
            assert row is not None
            out.append({
                "t": time.monotonic() - started, "rows": row[0], "dead": row[1] or 0,
                "table_mb": row[2] / 2**20, "indexes_mb": row[3] / 2**20,
                "available": row[4],
            })  # fmt: skip


def per_minute(
    minutes: int,
    sent: list[int],
    samples: list[dict[str, float]],
    lags: list[tuple[Any, ...]],
    start: float,
) -> list[dict[str, Any]]:
    out = []
    for m in range(minutes):
        # A window belongs to the minute of its middle (it is flushed at its end).
        windows = [w for w in lags if m * 60 <= w[0] - WINDOW / 2 - start < (m + 1) * 60]
        at_end = [s for s in samples if s["t"] <= (m + 1) * 60]
        last = at_end[-1] if at_end else None
        started = sum(w[1] for w in windows)
        out.append({
            "minute": m + 1, "enqueued_per_s": sent[m] / 60.0, "started_per_s": started / 60.0,
            "p50_ms": statistics.median(w[2] for w in windows) if windows else None,
            "p99_ms": max(w[3] for w in windows) if windows else None,
            "backlog": last["available"] if last else None,
            "rows": last["rows"] if last else None, "dead": last["dead"] if last else None,
            "table_mb": last["table_mb"] if last else None,
            "indexes_mb": last["indexes_mb"] if last else None,
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=7000.0)
    parser.add_argument("--retention", type=float, default=60.0, help="completed_retention, s")
    parser.add_argument("--out", default="bench-results/sustained.json")
    args = parser.parse_args()
    with migrated_cluster() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_lag (at float8, n int, p50_ms float8, p99_ms float8)")
        env = {
            **os.environ, "DELTA_DATABASE_URL": dsn, "PYTHONPATH": str(Path(__file__).parent),
            "BENCH_RETENTION": str(args.retention),
        }  # fmt: skip
        argv = [sys.executable, "-m", "delta_actors", "supervise",
                "--app", "bench_sustained:app", "--log-level", "warning"]  # fmt: skip
        proc = subprocess.Popen(argv, env=env)
        sent = [0] * (args.minutes + 1)
        samples: list[dict[str, float]] = []
        stop = threading.Event()
        try:
            wait_registered(dsn, proc, 2)
            start = time.time()
            sampler = threading.Thread(target=sample_table, args=(dsn, stop, samples))
            sampler.start()
            print(f"{args.minutes} min at {args.rate:.0f} jobs/s, retention {args.retention:g}s",
                  flush=True)  # fmt: skip
            produce(dsn, args.minutes * 60.0, args.rate, sent)
            time.sleep(WINDOW + 2.0)  # the last window flushed
            stop.set()
            sampler.join()
            if proc.poll() is not None:
                raise RuntimeError(f"supervise exited {proc.returncode} during the run")
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        with psycopg.connect(dsn, autocommit=True) as conn:
            lags = conn.execute(
                "SELECT at, n, p50_ms, p99_ms FROM bench_lag ORDER BY at"
            ).fetchall()
        minutes = per_minute(args.minutes, sent, samples, lags, start)
    print(f"{'min':>3} {'in/s':>6} {'out/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'backlog':>8}"
          f" {'rows':>9} {'dead':>9} {'table MB':>9} {'idx MB':>7}")  # fmt: skip
    for m in minutes:
        print(
            f"{m['minute']:>3} {m['enqueued_per_s']:>6.0f} {m['started_per_s']:>6.0f}"
            f" {m['p50_ms'] or 0:>8.1f} {m['p99_ms'] or 0:>8.1f} {m['backlog']:>8}"
            f" {m['rows'] or 0:>9} {m['dead'] or 0:>9} {m['table_mb'] or 0:>9.1f}"
            f" {m['indexes_mb'] or 0:>7.1f}"
        )
    half = len(minutes) // 2
    if half >= 2:
        # The first two minutes fill the table up to its steady size: left out.
        first, second = minutes[2:half], minutes[half:]
        for name in ("p50_ms", "p99_ms", "rows", "table_mb", "indexes_mb"):
            a = statistics.median(m[name] or 0 for m in first)
            b = statistics.median(m[name] or 0 for m in second)
            print(f"{name}: median of minutes 3-{half} {a:.1f}, of {half + 1}-{len(minutes)}"
                  f" {b:.1f} ({b / a if a else float('nan'):.2f}x)")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "python": platform.python_version(), "cpus": os.cpu_count(), "rate": args.rate,
        "retention": args.retention, "minutes": minutes, "samples": samples,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

"""Steady load under a held snapshot: delta_actors and pgqueuer side by side, per minute.

A steady `--rate` of no-op jobs (or, with `--works`, informs of new objects whose works are
no-ops) is enqueued for `--minutes` and drained by one worker process at concurrency 100:
`delta-actors supervise` for delta_actors, a QueueManager for pgqueuer (its driver in
scripts/peers/, run from the peers' venv of scripts/bench_peers.py). Each system runs
twice, in this order: without, then with one other session holding a REPEATABLE READ
snapshot for the whole run (what a long report, a session left idle in transaction or a
replication slot catching up does). While it is held, vacuum may remove no row version
that died after it began, so every claimed job leaves dead versions behind.

Each run has a database of its own on one throwaway cluster. Reported per minute:
enqueued/s, started/s, enqueue-to-start lag p50/p99 (ms) and the backlog at the minute's end (jobs
enqueued and not yet started); for delta_actors also the dead row versions of delta_job
then. delta_actors' lag comes from its rows (attempted_at - created_at, the server's one
clock); pgqueuer's from the enqueue time carried in each job.

Usage: python scripts/bench_snapshot.py [--minutes 30] [--baseline-minutes N] [--rate 1500]
       [--works] [--systems delta,pgqueuer] [--out bench-results/snapshot.json]
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

from bench_peers import ROOT, peer, peers_python
from benchlib import exit_cleanly_on_sigterm, wait_registered

import delta_actors as delta
from delta_actors.db import migrations
from delta_actors.local.cluster import throwaway_cluster

TICK = 0.02  # seconds between enqueue batches


class Noop(delta.Job, kind="noop"):
    pass


class Item(delta.Object, kind="item"):
    key: str

    def id(self) -> str:
        return self.key


class ItemController(delta.Controller[Item]):
    async def work(self, resource: delta.Resource[Item]) -> None:
        return None


async def _noop(job: Noop) -> None:
    return None


app = delta.App(
    controllers=[ItemController()],
    jobs={Noop: _noop},
    namespaces={"default": delta.Namespace(max_workers=100)},
)


def hold_snapshot(dsn: str) -> psycopg.Connection[Any]:
    """A session holding a REPEATABLE READ snapshot until it is closed."""
    conn = psycopg.connect(dsn)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SELECT count(*) FROM pg_class").fetchone()
    return conn


def produce(dsn: str, seconds: float, rate: float, works: bool) -> int:
    """Enqueue `rate` jobs (or informs) per second for `seconds`; return how many."""
    per_tick = rate * TICK
    sent = 0
    owed = 0.0
    with delta.Client.connect(dsn) as client:
        started = time.perf_counter()
        next_at = started
        while (now := time.perf_counter()) - started < seconds:
            owed += per_tick
            n, owed = int(owed), owed - int(owed)
            if n:
                if works:
                    client.inform_many([Item(key=f"i{sent + i}") for i in range(n)])
                else:
                    client.enqueue_many([Noop() for _ in range(n)])
                sent += n
            next_at += TICK
            time.sleep(max(0.0, next_at - now))
    return sent


def sample_dead_rows(dsn: str, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    """Every 5 s: seconds since start, delta_job's dead row versions (statistics view)."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(5.0):
            row = conn.execute(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'delta_job'"
            ).fetchone()
            out.append((time.monotonic() - started, int(row[0]) if row else 0))


MINUTES_SQL = """
WITH runs AS (
    SELECT floor(extract(epoch FROM created_at - %(start)s) / 60)::int AS enqueued_minute,
           floor(extract(epoch FROM attempted_at - %(start)s) / 60)::int AS started_minute,
           extract(epoch FROM attempted_at - created_at) * 1000 AS lag_ms
    FROM delta_job WHERE kind = %(kind)s
)
SELECT m,
       (SELECT count(*) FROM runs WHERE enqueued_minute = m),
       (SELECT count(*) FROM runs WHERE started_minute = m),
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms) FROM runs
        WHERE started_minute = m),
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) FROM runs
        WHERE started_minute = m),
       (SELECT count(*) FROM runs WHERE enqueued_minute <= m)
           - (SELECT count(*) FROM runs WHERE started_minute <= m)
FROM generate_series(0, %(minutes)s - 1) AS m
"""


def run_delta(dsn: str, minutes: int, rate: float, held: bool, works: bool) -> dict[str, Any]:
    env = {**os.environ, "DELTA_DATABASE_URL": dsn, "PYTHONPATH": str(Path(__file__).parent)}
    argv = [sys.executable, "-m", "delta_actors", "supervise",
            "--app", "bench_snapshot:app", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env)
    holder = None
    dead: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        wait_registered(dsn, proc, 2)
        holder = hold_snapshot(dsn) if held else None
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        sampler = threading.Thread(target=sample_dead_rows, args=(dsn, stop, dead))
        sampler.start()
        sent = produce(dsn, minutes * 60.0, rate, works)
        # Let the last jobs start (the backlog of the last minute is what it is).
        time.sleep(5.0)
        stop.set()
        sampler.join()
        if proc.poll() is not None:
            raise RuntimeError(f"supervise exited {proc.returncode} during the run")
    finally:
        stop.set()
        if holder is not None:
            holder.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    with psycopg.connect(dsn, autocommit=True) as conn:
        kind = "item" if works else "noop"
        rows = conn.execute(MINUTES_SQL, {"start": start, "kind": kind, "minutes": minutes})
        per_minute = [
            {"minute": m + 1, "enqueued_per_s": e / 60.0, "started_per_s": n / 60.0,
             "p50_ms": p50 or 0.0,
             "p99_ms": p99 or 0.0, "backlog": backlog,
             "dead_rows": max((d for t, d in dead if t <= (m + 1) * 60.0), default=0)}
            for m, e, n, p50, p99, backlog in rows.fetchall()
        ]  # fmt: skip
        sizes = conn.execute(
            "SELECT pg_size_pretty(pg_table_size('delta_job')),"
            " pg_size_pretty(pg_indexes_size('delta_job'))"
        ).fetchone()
    return {"sent": sent, "per_minute": per_minute, "table": sizes[0], "indexes": sizes[1]}  # type: ignore[index]


def run_pgqueuer(dsn: str, minutes: int, rate: float, held: bool) -> dict[str, Any]:
    python = peers_python()
    script = ROOT / "scripts" / "peers" / "pgqueuer_driver.py"
    peer(python, "pgqueuer", dsn, "setup")
    holder = hold_snapshot(dsn) if held else None
    try:
        done = subprocess.run(
            [python, str(script), dsn, "steady", str(minutes * 60.0), str(rate)],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        if holder is not None:
            holder.close()
    if done.returncode != 0:
        raise RuntimeError(f"pgqueuer steady failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summary(run: dict[str, Any]) -> dict[str, float]:
    minutes = run["per_minute"]
    return {
        "p50_ms_median": statistics.median(m["p50_ms"] for m in minutes),
        "p99_ms_worst": max(m["p99_ms"] for m in minutes),
        "p99_ms_last": minutes[-1]["p99_ms"],
        "backlog_last": minutes[-1]["backlog"],
        "started_per_s_last": minutes[-1]["started_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument(
        "--baseline-minutes", type=int, default=None,
        help="minutes of the runs without a held snapshot (default: --minutes)",
    )  # fmt: skip
    parser.add_argument("--works", action="store_true", help="resource works, not plain jobs")
    parser.add_argument("--systems", default="delta,pgqueuer")
    parser.add_argument("--out", default="bench-results/snapshot.json")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if args.works and "pgqueuer" in systems:
        systems.remove("pgqueuer")  # no resources there
    exit_cleanly_on_sigterm()
    cluster = throwaway_cluster()
    results: dict[str, Any] = {}
    try:
        for system in systems:
            for held in (False, True):
                name = f"{system}/{'held' if held else 'baseline'}"
                dbname = name.replace("/", "_")
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{dbname}"')
                dsn = cluster.dsn(dbname)
                minutes = args.minutes if held else (args.baseline_minutes or args.minutes)
                print(f"{name}: {minutes} min at {args.rate:.0f}/s", flush=True)
                if system == "delta":
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        migrations.migrate(conn)
                    run = run_delta(dsn, minutes, args.rate, held, args.works)
                else:
                    run = run_pgqueuer(dsn, minutes, args.rate, held)
                results[name] = {**run, "summary": summary(run)}
                for m in run["per_minute"]:
                    print(
                        f"  min {m['minute']:>2}: in {m['enqueued_per_s']:5.0f}/s  out"
                        f" {m['started_per_s']:5.0f}/s  p50"
                        f" {m['p50_ms']:8.1f} ms  p99 {m['p99_ms']:8.1f} ms  backlog"
                        f" {m['backlog']:>7}  dead {m.get('dead_rows', '-')}",
                        flush=True,
                    )
    finally:
        cluster.remove()
    print("\nsummary (p50: median of the minutes; p99: worst minute and last minute)")
    for name, run in results.items():
        s = run["summary"]
        print(
            f"  {name:<18} p50 {s['p50_ms_median']:7.1f} ms  p99 worst {s['p99_ms_worst']:8.1f}"
            f" ms  last {s['p99_ms_last']:8.1f} ms  backlog at end {s['backlog_last']:>7}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()

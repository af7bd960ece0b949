"""Resource sync through `delta-actors supervise`, and the memory of its processes.

One run starts `supervise` with a no-op controller (one namespace actor at concurrency
100, plus the leader) on a throwaway cluster and waits until its actors registered and
settled. It reads every process's resident memory idle, then informs `--count` new
resources in batches of `--batch` and waits until all are synced. It reports:

- resources/s from the first inform to the last `synced_at` (the database's clock);
- per process (supervisor, namespace actor, leader), in MiB from /proc: RSS idle, peak
  RSS (VmHWM) once the load is done, and PSS then (shared pages split among sharers).

Usage: python scripts/bench_supervise.py [--runs 3] [--count 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import Item, ItemController
from benchlib import migrated_cluster, wait_registered

import delta_actors as delta

CONCURRENCY = 100
app = delta.App(
    controllers=[ItemController()],
    namespaces={"default": delta.Namespace(max_workers=CONCURRENCY)},
)


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of `pid` in MiB: now (VmRSS), peak (VmHWM), and proportional (Pss).

    RSS counts pages shared with the forking supervisor in full in every process; PSS
    splits each shared page among its sharers, so PSS adds up across the processes.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = {}
    for line in (status + rollup).splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Pss"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return {"rss_mib": fields["VmRSS"], "peak_mib": fields["VmHWM"], "pss_mib": fields["Pss"]}


def processes(dsn: str, supervisor: int) -> dict[str, int]:
    """The supervisor and its registered actors, by label, as pids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT role, namespace, pid FROM delta_actor ORDER BY id").fetchall()
    found = {"supervisor": supervisor}
    for role, namespace, pid in rows:
        found[f"{role} {namespace}" if role != "leader" else "leader"] = pid
    return found


class SyncRun(TypedDict):
    resources_per_s: float
    memory: dict[str, dict[str, float]]  # process label -> figure -> MiB


def run_once(dsn: str, count: int, batch: int) -> SyncRun:
    """One supervise run: informs to synced, and memory idle and under load."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE delta_job, delta_resource, delta_actor")
        conn.execute("VACUUM ANALYZE delta_job, delta_resource")
    env = {**os.environ, "DELTA_DATABASE_URL": dsn, "PYTHONPATH": str(Path(__file__).parent)}
    argv = [sys.executable, "-m", "delta_actors", "supervise",
            "--app", "bench_supervise:app", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env)
    try:
        wait_registered(dsn, proc, 2)  # the namespace actor and the leader
        time.sleep(2.0)  # settled: pools filled, first heartbeats sent
        pids = processes(dsn, proc.pid)
        idle = {label: memory_mib(pid) for label, pid in pids.items()}
        with delta.Client.connect(dsn) as client, psycopg.connect(dsn, autocommit=True) as conn:
            clock = conn.execute("SELECT clock_timestamp()").fetchone()
            assert clock is not None
            started = clock[0]
            items = [Item(key=f"sync-{i}") for i in range(count)]
            for start in range(0, count, batch):
                client.inform_many(items[start : start + batch])
            while True:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'synced'), max(synced_at)"
                    " FROM delta_resource"
                ).fetchone()
                assert row is not None
                if row[0] == count:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"supervise exited {proc.returncode} under load")
                time.sleep(0.05)
        elapsed = (row[1] - started).total_seconds()
        loaded = {label: memory_mib(pid) for label, pid in pids.items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if proc.returncode != 0:
        raise RuntimeError(f"supervise exited {proc.returncode} after SIGTERM")
    return {
        "resources_per_s": count / elapsed,
        "memory": {
            label: {
                "idle_rss_mib": idle[label]["rss_mib"],
                "peak_rss_mib": loaded[label]["peak_mib"],
                "loaded_pss_mib": loaded[label]["pss_mib"],
            }
            for label in pids
        },
    }


def median_memory(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process label, the median of each memory figure over `runs` (their "memory")."""
    memories: list[dict[str, dict[str, float]]] = [r["memory"] for r in runs]
    return {
        label: {k: statistics.median(m[label][k] for m in memories) for k in figures}
        for label, figures in memories[0].items()
    }


def print_memory(memory: dict[str, dict[str, float]]) -> None:
    print(f"{'process':<20}{'idle RSS':>12}{'peak RSS':>12}{'PSS loaded':>12}  (MiB)")
    for label, m in memory.items():
        row = (m["idle_rss_mib"], m["peak_rss_mib"], m["loaded_pss_mib"])
        print(f"{label:<20}" + "".join(f"{v:>12.1f}" for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--out", default="bench-results/supervise.json")
    args = parser.parse_args()
    runs: list[SyncRun] = []
    with migrated_cluster() as dsn:
        for run in range(args.runs):
            runs.append(run_once(dsn, args.count, args.batch))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    rates = [r["resources_per_s"] for r in runs]
    shown = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"\ninform -> synced through supervise: {statistics.median(rates):,.0f} resources/s")
    print(f"  runs: {shown}")
    print()
    print_memory(median_memory(runs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"sizes": vars(args), "runs": runs, "memory": median_memory(runs),
              "resources_per_s": statistics.median(rates)}  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

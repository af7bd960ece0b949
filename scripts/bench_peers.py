"""Side by side: delta_actors against procrastinate and pgqueuer, and the SQL ceiling.

One throwaway cluster, one database per system. Each run does, for every system in turn
(A B C A B C ... so machine drift hits all alike): bulk enqueue of `--bulk` no-op jobs,
drain of `--drain` jobs by one worker process at concurrency 10 and 100 (every job done
exactly once, checked from the tables), enqueue-to-start latency p50/p99 at `--rate`
jobs/s. Then, in the same run:

- the ceiling (scripts/ceiling.py): the claim + complete cycle as plain SQL, on a minimal
  table and as our own statements on our own schema, the best of a small grid;
- resource sync, which no peer has: inform_many of new and of unchanged objects,
  inform-to-synced through `delta-actors supervise` with a no-op controller, a CPU-bound
  controller at processes=1 and 2 (scripts/bench_cpu.py);
- the memory of supervise's processes, idle and under that load.

The peers run from their own venv (`.bench/peers-venv`, created on first use; never
project dependencies) through the drivers in scripts/peers/. Prints medians with the
ratios delta_actors / peer, whether the issue's goals are met, and writes JSON (`--out`).

Usage: python scripts/bench_peers.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

import bench_cpu
import bench_supervise
from bench_inform import bench_informs
from bench_queue import bench_bulk_insert, bench_drain, bench_latency
from benchlib import exit_cleanly_on_sigterm
from ceiling import ceiling

import delta_actors as delta
from delta_actors.db import migrations
from delta_actors.local.cluster import throwaway_cluster

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench" / "peers-venv"
PEERS = {"procrastinate": "procrastinate==3.10.0", "pgqueuer": "pgqueuer==1.6.0"}
DRIVERS = ["psycopg[binary]", "asyncpg", "uvloop"]  # what the peers run on at their best
INFORM_BATCH = 5_000
SYNC_METRICS = {
    "inform_new_per_s": "inform_many, new objects/s",
    "inform_unchanged_per_s": "inform_many, unchanged objects/s",
    "supervise_synced_per_s": "inform -> synced via supervise, /s",
    "cpu_p1_per_s": "CPU-bound ~20 ms, processes=1, /s",
    "cpu_p2_per_s": "CPU-bound ~20 ms, processes=2, /s",
}
METRICS = ["bulk_jobs_per_s", "drain_c10_jobs_per_s", "drain_c100_jobs_per_s", "p50_ms", "p99_ms"]


def peers_python() -> str:
    """The peers' venv python, creating the venv on first use or when the pins changed."""
    python = VENV / "bin" / "python"
    wanted = [*DRIVERS, *PEERS.values()]
    stamp = VENV / "delta-bench-requirements.txt"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or stamp.read_text().split() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True)
        stamp.write_text("\n".join(wanted))
    return str(python)


def peer(python: str, name: str, dsn: str, op: str, *numbers: float) -> dict[str, float]:
    """Run one workload of a peer in its venv; return its result line."""
    script = ROOT / "scripts" / "peers" / f"{name}_driver.py"
    argv = [python, str(script), dsn, op, *(str(n) for n in numbers)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {op} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_peer(python: str, name: str, dsn: str, args: argparse.Namespace) -> dict[str, float]:
    p = peer(python, name, dsn, "latency", args.latency_jobs, args.rate)
    return {
        "bulk_jobs_per_s": peer(python, name, dsn, "bulk", args.bulk)["rate"],
        "drain_c10_jobs_per_s": peer(python, name, dsn, "drain", args.drain, 10)["rate"],
        "drain_c100_jobs_per_s": peer(python, name, dsn, "drain", args.drain, 100)["rate"],
        "p50_ms": p["p50"],
        "p99_ms": p["p99"],
    }


def run_ours(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    with delta.Client.connect(dsn) as client:
        p50, p99 = bench_latency(client, dsn, args.latency_jobs, args.rate)
        return {
            "bulk_jobs_per_s": bench_bulk_insert(client, dsn, args.bulk),
            "drain_c10_jobs_per_s": bench_drain(client, dsn, args.drain, 10)[0],
            "drain_c100_jobs_per_s": bench_drain(client, dsn, args.drain, 100)[0],
            "p50_ms": p50,
            "p99_ms": p99,
        }


# ---------------------------------------------------------------- resource sync (ours only)


def run_sync(dsn: str, args: argparse.Namespace, cpu_rounds: int) -> dict[str, Any]:
    """Informs, inform-to-synced through supervise with memory, and the CPU-bound split."""
    with delta.Client.connect(dsn) as client:
        new, unchanged = bench_informs(client, dsn, args.resources, INFORM_BATCH)
    supervised = bench_supervise.run_once(dsn, args.resources, INFORM_BATCH)
    cpu = {p: bench_cpu.run_once(dsn, p, args.cpu_resources, cpu_rounds) for p in (1, 2)}
    return {
        "inform_new_per_s": new,
        "inform_unchanged_per_s": unchanged,
        "supervise_synced_per_s": supervised["resources_per_s"],
        "cpu_p1_per_s": cpu[1]["resources_per_s"],
        "cpu_p2_per_s": cpu[2]["resources_per_s"],
        "memory": supervised["memory"],
    }


# ---------------------------------------------------------------- driver


def medians(results: list[dict[str, Any]], metrics: list[str]) -> dict[str, float]:
    return {m: statistics.median(float(r[m]) for r in results) for m in metrics}


def print_queue(median: dict[str, dict[str, float]]) -> None:
    ours = median["delta_actors"]
    header = "".join(f"{s:>16}" for s in median) + "".join(f"{'ours/' + p:>20}" for p in PEERS)
    print(f"\n{'metric':<24}{header}")
    for m in METRICS:
        row = f"{m:<24}" + "".join(f"{median[s][m]:>16,.1f}" for s in median)
        row += "".join(f"{ours[m] / median[p][m]:>20.2f}" for p in PEERS)
        print(row)
    best = {m: max(median[p][m] for p in PEERS) for m in METRICS if m.endswith("_per_s")}
    p99 = min(median[p]["p99_ms"] for p in PEERS)
    print("\ngoals against the best peer of this run, at each size:")
    for m, goal in (("drain_c10_jobs_per_s", 3), ("drain_c100_jobs_per_s", 3),
                    ("bulk_jobs_per_s", 2)):  # fmt: skip
        ratio = ours[m] / best[m]
        verdict = "met" if ratio >= goal else "MISSED"
        print(f"  {m:<24} {ratio:5.2f}x  (goal >= {goal}x)  {verdict}")
    print(
        f"  {'p99_ms':<24} {ours['p99_ms']:.1f} vs {p99:.1f}  (goal: no worse)  "
        + ("met" if ours["p99_ms"] <= p99 else "MISSED")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--resources", type=int, default=20_000, help="informed per sync run")
    parser.add_argument("--cpu-resources", type=int, default=300, help="CPU-bound resources")
    parser.add_argument("--out", default="bench-results/peers.json")
    args = parser.parse_args()
    python = peers_python()
    cpu_rounds = bench_cpu.calibrate()

    exit_cleanly_on_sigterm()
    cluster = throwaway_cluster()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for db in ("ours", *PEERS):
                conn.execute(f"CREATE DATABASE {db}")
        ours_dsn = cluster.dsn("ours")
        with psycopg.connect(ours_dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        for name in PEERS:
            peer(python, name, cluster.dsn(name), "setup")
        runs: dict[str, list[dict[str, float]]] = {"delta_actors": [], **{n: [] for n in PEERS}}
        sync: list[dict[str, Any]] = []
        ceilings: dict[str, list[tuple[float, str]]] = {"minimal": [], "delta_job": []}
        for run in range(args.runs):
            runs["delta_actors"].append(run_ours(ours_dsn, args))
            for name in PEERS:
                runs[name].append(run_peer(python, name, cluster.dsn(name), args))
            for cycle, found in ceilings.items():
                found.append(ceiling(ours_dsn, cycle, args.drain))
            sync.append(run_sync(ours_dsn, args, cpu_rounds))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        cluster.remove()

    median = {system: medians(results, METRICS) for system, results in runs.items()}
    print_queue(median)

    ours = median["delta_actors"]
    sql = {cycle: statistics.median(rate for rate, _ in found) for cycle, found in ceilings.items()}
    print("\nthe plain-SQL claim + complete ceiling (best of connections x batch, pipelined):")
    for cycle, found in ceilings.items():
        settings = ", ".join(sorted({setting for _, setting in found}))
        print(f"  {cycle:<10} {sql[cycle]:>9,.0f} jobs/s  (best at: {settings})")
    drain = ours["drain_c100_jobs_per_s"]
    print(
        f"  delta_actors drain c100 = {drain / sql['minimal']:.0%} of the minimal ceiling, "
        f"{drain / sql['delta_job']:.0%} of its own statements run bare"
    )

    sync_median = medians(sync, list(SYNC_METRICS))
    print(f"\n{'resource sync (no peer has it)':<40}{'median':>10}{'runs':>28}")
    for m, label in SYNC_METRICS.items():
        shown = ", ".join(f"{r[m]:,.0f}" for r in sync)
        print(f"{label:<40}{sync_median[m]:>10,.1f}{shown:>28}")
    speedup = sync_median["cpu_p2_per_s"] / sync_median["cpu_p1_per_s"]
    print(f"CPU-bound speed-up with processes=2: {speedup:.2f}x on {os.cpu_count()} cores")

    memory = bench_supervise.median_memory(sync)
    print("\nmemory of supervise (no-op controller, concurrency 100; loaded = the sync run):")
    bench_supervise.print_memory(memory)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": vars(args),
        "peers": PEERS,
        "runs": runs,
        "median": median,
        "ceilings": ceilings,
        "ceiling_jobs_per_s": sql,
        "fraction_of_ceiling": {cycle: drain / rate for cycle, rate in sql.items()},
        "sync_runs": sync,
        "sync_median": sync_median,
        "memory_mib": memory,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

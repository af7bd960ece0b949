"""Side-by-side queue benchmark: delta_actors against procrastinate and pgqueuer.

One throwaway cluster, one database per system. Each run does, for every system in turn
(A B C A B C ... so machine drift hits all alike): bulk enqueue of `--bulk` no-op jobs,
drain of `--drain` jobs by one worker process at concurrency 10 and 100 (every job done
exactly once, checked from the tables), enqueue-to-start latency p50/p99 at `--rate`
jobs/s. Then the ceiling: the same claim + complete cycle as plain SQL (psycopg, 10
connections, batches of 50), the jobs/s PostgreSQL sustains here.

The peers run from their own venv (`.bench/peers-venv`, created on first use; never
project dependencies) through the drivers in scripts/peers/. Prints medians with the
ratios delta_actors / peer and writes JSON (`--out`).

Usage: python scripts/bench_peers.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import bench_bulk_insert, bench_drain, bench_latency

import delta_actors as delta
from delta_actors import schema
from delta_actors.cluster import throwaway_cluster

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench" / "peers-venv"
PEERS = {"procrastinate": "procrastinate==3.10.0", "pgqueuer": "pgqueuer==1.6.0"}
METRICS = ["bulk_jobs_per_s", "drain_c10_jobs_per_s", "drain_c100_jobs_per_s", "p50_ms", "p99_ms"]


def peers_python() -> str:
    """The peers' venv python, creating the venv on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "psycopg[binary]", *PEERS.values()]
        subprocess.run(pip, check=True)
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
            "drain_c10_jobs_per_s": bench_drain(client, dsn, args.drain, 10),
            "drain_c100_jobs_per_s": bench_drain(client, dsn, args.drain, 100),
            "p50_ms": p50,
            "p99_ms": p99,
        }


# ---------------------------------------------------------------- the SQL ceiling

CEILING_SCHEMA = """
DROP TABLE IF EXISTS ceiling_job;
CREATE TABLE ceiling_job (
    id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'queued', payload jsonb,
    started_at timestamptz, finished_at timestamptz);
CREATE INDEX ON ceiling_job (id) WHERE state = 'queued';
"""
CLAIM = """
UPDATE ceiling_job SET state = 'running', started_at = now()
WHERE id IN (SELECT id FROM ceiling_job WHERE state = 'queued' ORDER BY id
             LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id
"""
COMPLETE = "UPDATE ceiling_job SET state = 'completed', finished_at = now() WHERE id = ANY(%s)"


async def ceiling(dsn: str, count: int, connections: int = 10, batch: int = 50) -> float:
    """Jobs/s of plain-SQL claim + complete by `connections` async connections."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CEILING_SCHEMA)
        conn.execute(
            "INSERT INTO ceiling_job (payload) SELECT '{}'::jsonb FROM generate_series(1, %s)",
            (count,),
        )
        conn.execute("VACUUM ANALYZE ceiling_job")

    async def loop() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                cur = await conn.execute(CLAIM, (batch,))
                ids = [row[0] for row in await cur.fetchall()]
                if not ids:
                    return
                await conn.execute(COMPLETE, (ids,))

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM ceiling_job"
        ).fetchone()
    assert row == (count, count), f"ceiling: not every job completed exactly once: {row}"
    return count / elapsed


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--out", default="bench-results/peers.json")
    args = parser.parse_args()
    python = peers_python()

    cluster = throwaway_cluster()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for db in ("ours", *PEERS):
                conn.execute(f"CREATE DATABASE {db}")
        with psycopg.connect(cluster.dsn("ours"), autocommit=True) as conn:
            schema.migrate(conn)
        for name in PEERS:
            peer(python, name, cluster.dsn(name), "setup")
        runs: dict[str, list[dict[str, float]]] = {"delta_actors": [], **{n: [] for n in PEERS}}
        ceilings: list[float] = []
        for run in range(args.runs):
            runs["delta_actors"].append(run_ours(cluster.dsn("ours"), args))
            for name in PEERS:
                runs[name].append(run_peer(python, name, cluster.dsn(name), args))
            ceilings.append(asyncio.run(ceiling(cluster.dsn("ours"), args.drain)))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        cluster.remove()

    median = {
        system: {m: statistics.median(r[m] for r in results) for m in METRICS}
        for system, results in runs.items()
    }
    ours = median["delta_actors"]
    print(
        f"\n{'metric':<24}"
        + "".join(f"{s:>16}" for s in median)
        + "".join(f"{'ours/' + p:>20}" for p in PEERS)
    )
    for m in METRICS:
        row = f"{m:<24}" + "".join(f"{median[s][m]:>16,.1f}" for s in median)
        row += "".join(f"{ours[m] / median[p][m]:>20.2f}" for p in PEERS)
        print(row)
    sql = statistics.median(ceilings)
    best_drain = max(ours["drain_c10_jobs_per_s"], ours["drain_c100_jobs_per_s"])
    print(f"\nSQL ceiling (claim + complete, 10 connections, batch 50): {sql:,.0f} jobs/s")
    print(f"delta_actors best drain = {best_drain / sql:.0%} of the ceiling")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": vars(args),
        "peers": PEERS,
        "runs": runs,
        "median": median,
        "ceiling_jobs_per_s": ceilings,
        "fraction_of_ceiling": best_drain / sql,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

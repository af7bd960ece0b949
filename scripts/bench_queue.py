"""Benchmark the job queue on a throwaway PostgreSQL cluster.

Measures, each `--runs` times (median reported):
- bulk insert: `Client.enqueue_many` of `--bulk` no-op jobs, jobs/s;
- drain: one worker process with no-op async jobs at concurrency 10 and 100, jobs/s
  (from the worker's first claim until its last result is written), and the worker's
  CPU per job over the same span (us);
- latency: enqueue-to-start of single jobs enqueued at `--rate` jobs/s, p50/p99 ms.

Prints a table and writes JSON (`--out`). Usage: python scripts/bench_queue.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import uvloop

import delta_actors as delta
from delta_actors.db import migrations
from delta_actors.local.cluster import throwaway_cluster


class Noop(delta.Job, kind="noop"):
    sent_at: float = 0.0


async def _noop(job: Noop) -> None:
    return None


# ---------------------------------------------------------------- worker subprocess


class Item(delta.Object, kind="item"):
    """The object of the resource benchmarks (see bench_inform.py)."""

    key: str
    value: int = 0

    def id(self) -> str:
        return self.key


class ItemController(delta.Controller[Item]):
    async def work(self, resource: delta.Resource[Item]) -> None:
        return None


def worker_main(dsn: str, concurrency: int, count: int, mode: str) -> None:
    """Run one worker until `count` jobs completed; print a JSON result line.

    mode: "noop" (no-op jobs), "latency" (jobs that record enqueue-to-start time) or
    "resources" (resource works of a no-op controller).
    """
    latencies: list[float] = []

    async def record(job: Noop) -> None:
        latencies.append(time.time() - job.sent_at)

    app = delta.App(
        jobs={Noop: record if mode == "latency" else _noop},
        controllers=[ItemController()] if mode == "resources" else [],
    )

    async def main() -> dict[str, object]:
        worker = delta.Worker(app, dsn, max_workers=concurrency, poll_interval=0.5)
        await worker.start()
        await worker.wait_listening()
        print(json.dumps({"ready": True}), flush=True)
        started = None
        cpu_started = time.process_time()
        while worker.stats.completed < count or worker._completer.backlog:
            if started is None and worker.stats.claimed:
                started = time.perf_counter()
                cpu_started = time.process_time()
            await asyncio.sleep(0.0005 if started is None else 0.002)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        cpu = time.process_time() - cpu_started
        finished_at = time.time()
        stats = dataclasses.asdict(worker.stats)
        await worker.stop()
        return {"elapsed": elapsed, "cpu": cpu, "finished_at": finished_at,
                "latencies": latencies, **stats}  # fmt: skip

    print(json.dumps(uvloop.run(main())), flush=True)


def start_worker(dsn: str, concurrency: int, count: int, mode: str) -> subprocess.Popen[str]:
    """Start a benchmark worker process and wait until it listens."""
    argv = [sys.executable, __file__, "_worker", dsn, str(concurrency), str(count), mode]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError("benchmark worker did not start")
    return proc


def finish_worker(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a benchmark worker and return its result line."""
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker exited {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- measurements


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE delta_job, delta_actor, delta_resource")
        conn.execute("VACUUM ANALYZE delta_job")


def bench_bulk_insert(client: delta.Client, dsn: str, count: int) -> float:
    reset(dsn)
    jobs = [Noop() for _ in range(count)]
    started = time.perf_counter()
    client.enqueue_many(jobs)
    return count / (time.perf_counter() - started)


def bench_drain(
    client: delta.Client, dsn: str, count: int, concurrency: int
) -> tuple[float, float]:
    """Jobs/s of one drain, and the worker's CPU per job (us)."""
    reset(dsn)
    client.enqueue_many([Noop() for _ in range(count)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE delta_job")
    result = finish_worker(start_worker(dsn, concurrency, count, "noop"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM delta_job"
        ).fetchone()
    assert row == (count, count), f"not every job completed exactly once: {row}"
    return count / float(result["elapsed"]), float(result["cpu"]) / count * 1e6


def bench_latency(client: delta.Client, dsn: str, count: int, rate: float) -> tuple[float, float]:
    reset(dsn)
    proc = start_worker(dsn, 10, count, "latency")
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for _ in range(count):
        next_at += interval
        client.enqueue(Noop(sent_at=time.time()))
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    result = finish_worker(proc)
    latencies = sorted(float(x) * 1000 for x in result["latencies"])
    return percentile(latencies, 50), percentile(latencies, 99)


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=50_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--out", default="bench-results/queue.json")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.bulk, args.drain, args.latency_jobs = 1, 10_000, 5_000, 100

    cluster = throwaway_cluster()
    try:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        results: dict[str, list[float]] = {
            "bulk_insert_jobs_per_s": [],
            "drain_c10_jobs_per_s": [],
            "drain_c100_jobs_per_s": [],
            "drain_c10_worker_cpu_us": [],
            "drain_c100_worker_cpu_us": [],
            "latency_p50_ms": [],
            "latency_p99_ms": [],
        }
        with delta.Client.connect(dsn) as client:
            for run in range(args.runs):
                results["bulk_insert_jobs_per_s"].append(bench_bulk_insert(client, dsn, args.bulk))
                for concurrency in (10, 100):
                    rate, cpu = bench_drain(client, dsn, args.drain, concurrency)
                    results[f"drain_c{concurrency}_jobs_per_s"].append(rate)
                    results[f"drain_c{concurrency}_worker_cpu_us"].append(cpu)
                p50, p99 = bench_latency(client, dsn, args.latency_jobs, args.rate)
                results["latency_p50_ms"].append(p50)
                results["latency_p99_ms"].append(p99)
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        cluster.remove()

    targets = {
        "bulk_insert_jobs_per_s": (">=", 50_000),
        "drain_c10_jobs_per_s": ("", None),
        "drain_c100_jobs_per_s": (">=", 10_000),
        "drain_c10_worker_cpu_us": ("", None),
        "drain_c100_worker_cpu_us": ("", None),
        "latency_p50_ms": ("<", 3),
        "latency_p99_ms": ("<", 10),
    }
    print(f"\n{'metric':<26}{'median':>12}{'runs':>32}  target")
    for name, values in results.items():
        op, target = targets[name]
        shown = ", ".join(f"{v:,.1f}" for v in values)
        goal = f"{op} {target:,}" if target is not None else ""
        print(f"{name:<26}{statistics.median(values):>12,.1f}{shown:>32}  {goal}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {"bulk": args.bulk, "drain": args.drain, "latency_jobs": args.latency_jobs},
        "runs": results,
        "median": {name: statistics.median(values) for name, values in results.items()},
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()

"""The job queue direct, through PgBouncer in session mode, and in transaction mode.

One throwaway cluster, two PgBouncers in front of it (Debian's `pgbouncer`: session mode
with `--session-pool` server connections, transaction mode with `--transaction-pool`),
and four ways for a worker process and its client to reach the database:

- direct: a Unix socket to PostgreSQL;
- session: through PgBouncer in session mode, undeclared (it behaves as a direct one);
- transaction: through PgBouncer in transaction mode, `delta_pool_mode=transaction`:
  nothing prepared (the claim is planned every time), no LISTEN: the worker polls
  every 0.2 s (its default then);
- transaction+listen: the same, with LISTEN on a direct connection (`listen_dsn`).

Each run measures, for each way in turn (alternating, so that a load on the machine
falls on all of them alike), the drain rate of `--drain` no-op jobs at concurrency 10
and 100 (bench_queue.py's measure: from the first claim to the last result written) and
the enqueue-to-start latency of `--latency-jobs` single jobs enqueued at `--rate` jobs/s
(p50, p99). Medians of `--runs` runs, and each one's ratio to direct.

Usage: python scripts/bench_pooler.py [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import uvloop

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import Noop, percentile
from benchlib import migrated_cluster, pgbouncer

import delta_actors as delta

WAYS = ("direct", "session", "transaction", "transaction+listen")


def worker_main(dsn: str, listen_dsn: str, concurrency: int, count: int, mode: str) -> None:
    """Run one worker until `count` jobs completed; print a JSON result line."""
    latencies: list[float] = []

    async def record(job: Noop) -> None:
        if mode == "latency":
            latencies.append(time.time() - job.sent_at)

    app = delta.App(jobs={Noop: record})

    async def main() -> dict[str, object]:
        worker = delta.Worker(app, dsn, max_workers=concurrency, listen_dsn=listen_dsn or None)
        await worker.start()
        await worker.wait_listening()
        print(json.dumps({"ready": True}), flush=True)
        started = None
        while worker.stats.completed < count or worker._completer.backlog:
            if started is None and worker.stats.claimed:
                started = time.perf_counter()
            await asyncio.sleep(0.0005 if started is None else 0.002)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        failures = worker.stats.claim_failures
        await worker.stop()
        return {"elapsed": elapsed, "latencies": latencies, "claim_failures": failures}

    print(json.dumps(uvloop.run(main())), flush=True)


def run_worker(
    dsn: str, listen_dsn: str | None, concurrency: int, count: int, mode: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "_worker", dsn, listen_dsn or "", str(concurrency),
            str(count), mode]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError("benchmark worker did not start")
    return proc


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["claim_failures"]:
        raise RuntimeError(f"{result['claim_failures']} claims failed")
    return result


def reset(direct: str) -> None:
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("TRUNCATE delta_job, delta_actor, delta_resource")
        conn.execute("VACUUM ANALYZE delta_job")


def drain(direct: str, dsn: str, listen: str | None, count: int, concurrency: int) -> float:
    reset(direct)
    with delta.Client.connect(dsn) as client:
        client.enqueue_many([Noop() for _ in range(count)])
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("ANALYZE delta_job")
    result = result_of(run_worker(dsn, listen, concurrency, count, "noop"))
    with psycopg.connect(direct, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM delta_job WHERE state = 'completed'").fetchone()
    assert row == (count,), f"not every job completed: {row}"
    return count / float(result["elapsed"])


def latency(
    direct: str, dsn: str, listen: str | None, count: int, rate: float
) -> tuple[float, float]:
    reset(direct)
    proc = run_worker(dsn, listen, 10, count, "latency")
    with delta.Client.connect(dsn) as client:
        next_at = time.perf_counter()
        for _ in range(count):
            next_at += 1.0 / rate
            client.enqueue(Noop(sent_at=time.time()))
            time.sleep(max(0.0, next_at - time.perf_counter()))
    values = sorted(float(x) * 1000 for x in result_of(proc)["latencies"])
    return percentile(values, 50), percentile(values, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--transaction-pool", type=int, default=8)
    parser.add_argument("--session-pool", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--out", default="bench-results/pooler.json")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.drain, args.latency_jobs = 1, 5_000, 100
    metrics = ("drain_c10", "drain_c100", "latency_p50_ms", "latency_p99_ms")
    runs: dict[str, dict[str, list[float]]] = {w: {m: [] for m in metrics} for w in WAYS}
    with migrated_cluster() as direct, ExitStack() as stack:
        session = stack.enter_context(pgbouncer(direct, "session", args.session_pool))
        pooled = stack.enter_context(pgbouncer(direct, "transaction", args.transaction_pool))
        declared = f"{pooled} delta_pool_mode=transaction"
        ways = {
            "direct": (direct, None), "session": (session, None),
            "transaction": (declared, None), "transaction+listen": (declared, direct),
        }  # fmt: skip
        for run in range(args.runs):
            for way, (dsn, listen) in ways.items():
                figures = runs[way]
                figures["drain_c10"].append(drain(direct, dsn, listen, args.drain, 10))
                figures["drain_c100"].append(drain(direct, dsn, listen, args.drain, 100))
                p50, p99 = latency(direct, dsn, listen, args.latency_jobs, args.rate)
                figures["latency_p50_ms"].append(p50)
                figures["latency_p99_ms"].append(p99)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    medians = {w: {m: statistics.median(v) for m, v in runs[w].items()} for w in WAYS}
    print(f"\n{'way':<20}" + "".join(f"{m:>26}" for m in metrics))
    for way in WAYS:
        cells = []
        for metric in metrics:
            ratio = medians[way][metric] / medians["direct"][metric]
            cells.append(f"{medians[way][metric]:>14,.1f} ({ratio:>5.2f}x)")
        print(f"{way:<20}" + "".join(f"{c:>26}" for c in cells))
    for way in WAYS:
        shown = "; ".join(f"{m} " + "/".join(f"{v:,.1f}" for v in runs[way][m]) for m in metrics)
        print(f"  {way}: {shown}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sizes": vars(args), "runs": runs, "median": medians}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()

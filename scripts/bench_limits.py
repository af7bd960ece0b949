"""Benchmark cluster-wide limits of a kind on a throwaway PostgreSQL cluster.

One worker process at concurrency 100 drains `--count` no-op jobs spread evenly over four
kinds (enqueued interleaved), in two workloads alternated `--runs` times (the order
swapped every run; medians reported):
- unlimited: no kind has a limit (the claim is CLAIM_JOBS, as in bench_queue.py);
- limited: kind `limit-a` declares `concurrency=10` (the claim is the unlimited kinds'
  claim, then one for the limited kind).
For each: total jobs/s (from the worker's first claim to its last result written, as in
bench_queue.py), and, from the jobs' rows, the jobs/s of kind `limit-a` and of the other
three (from the first start to the last result of those jobs), when `limit-a` started
(seconds after the first start of the drain) and the most `limit-a` jobs running at once.
Every drain checks from the table that each job completed.

With `--rate-jobs N` (default 3,000; 0 skips it), a third workload after each pair: kinds
b, c and d as above and N jobs of kind `limit-r`, declared `rate=(1000, 1.0)`. It reports
the most starts of `limit-r` in any 1 s window (at most 1,000) and its paced start rate:
the starts after the first 1,000 (which may all go at once), per second from the first
start to the last.

With `--backlog N` (default 0: skipped), a fourth workload: N jobs of kind `limit-a` at
`concurrency=10` queued first, then, `BACKLOG_AGE` (2 s) later, kinds b, c and d as
above: the rate of b-d reports what the backlog costs the claims of the other kinds.

Prints a table and writes JSON (`--out`). Usage: python scripts/bench_limits.py [--runs 3]
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

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import finish_worker, reset
from benchlib import migrated_cluster

import delta_actors as delta

CONCURRENCY = 10
RATE = (1000, 1.0)
BACKLOG_AGE = 2.0  # seconds between the backlog and the other kinds' jobs


class KindA(delta.Job, kind="limit-a"):
    pass


class LimitedA(delta.Job, kind="limit-a", concurrency=CONCURRENCY):
    pass


class KindB(delta.Job, kind="limit-b"):
    pass


class KindC(delta.Job, kind="limit-c"):
    pass


class KindD(delta.Job, kind="limit-d"):
    pass


class RatedR(delta.Job, kind="limit-r", rate=RATE):
    pass


# The job types of each workload: what the worker registers and the client enqueues.
WORKLOADS: dict[str, tuple[type[delta.Job], ...]] = {
    "unlimited": (KindA, KindB, KindC, KindD),
    "limited": (LimitedA, KindB, KindC, KindD),
    "rate": (RatedR, KindB, KindC, KindD),
    "backlog": (LimitedA, KindB, KindC, KindD),
}


async def _noop(job: delta.Job) -> None:
    return None


# ---------------------------------------------------------------- worker subprocess


def worker_main(dsn: str, workload: str, count: int) -> None:
    """Run one worker of `workload` until `count` jobs completed; print a JSON result line."""
    app = delta.App(jobs=dict.fromkeys(WORKLOADS[workload], _noop))

    async def main() -> dict[str, object]:
        worker = delta.Worker(app, dsn, max_workers=100, poll_interval=0.5)
        await worker.start()
        await worker.wait_listening()
        print(json.dumps({"ready": True}), flush=True)
        started = None
        while worker.stats.completed < count or worker._completer.backlog:
            if started is None and worker.stats.claimed:
                started = time.perf_counter()
            await asyncio.sleep(0.0005 if started is None else 0.002)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        stats = dataclasses.asdict(worker.stats)
        await worker.stop()
        return {"elapsed": elapsed, **stats}

    print(json.dumps(uvloop.run(main())), flush=True)


def start_worker(dsn: str, workload: str, count: int) -> subprocess.Popen[str]:
    """Start a benchmark worker process and wait until it listens."""
    argv = [sys.executable, __file__, "_worker", dsn, workload, str(count)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError("benchmark worker did not start")
    return proc


# ---------------------------------------------------------------- measurements


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of `spans` (start, end) open at one instant; an end before a start at a tie."""
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def most_in_window(starts: list[float], window: float) -> int:
    """The most `starts` in any window of `window` seconds (open at its old end, as the
    claim counts: a start exactly `window` ago has left it)."""
    starts = sorted(starts)
    most = first = 0
    for last, at in enumerate(starts):
        while at - starts[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def per_second(count: int, first: float, last: float) -> float:
    return count / (last - first) if last > first else float("nan")


def bench_drain(
    client: delta.Client, dsn: str, workload: str, count: int, rated: int
) -> dict[str, float]:
    """Drain one workload; return its figures (see the module docstring)."""
    reset(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE delta_limit, delta_limit_start")
    first, *others = WORKLOADS[workload]
    each = count // 4
    if workload == "rate":  # the rated kind's jobs after the others'
        jobs = [kind() for _ in range(each) for kind in others] + [first() for _ in range(rated)]
    elif workload == "backlog":  # the limited kind's backlog, then (later) the others
        queued = [first() for _ in range(rated)]
        client.enqueue_many(queued)
        time.sleep(BACKLOG_AGE)
        jobs = [kind() for _ in range(each) for kind in others]
        client.enqueue_many(jobs)
        jobs += queued
    else:
        jobs = [kind() for _ in range(each) for kind in (first, *others)]
    if workload != "backlog":
        client.enqueue_many(jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE delta_job")
    result = finish_worker(start_worker(dsn, workload, len(jobs)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FROM delta_job"
        ).fetchone()
        assert row == (len(jobs), len(jobs)), f"not every job completed exactly once: {row}"
        spans = conn.execute(
            "SELECT kind = %s, extract(epoch FROM attempted_at)::float8,"
            " extract(epoch FROM finalized_at)::float8 FROM delta_job",
            (first.kind,),
        ).fetchall()
    mine = [(start, end) for is_first, start, end in spans if is_first]
    rest = [(start, end) for is_first, start, end in spans if not is_first]
    began = min(start for _, start, _ in spans)
    figures = {
        "total_jobs_per_s": len(jobs) / float(result["elapsed"]),
        "others_jobs_per_s": per_second(
            len(rest), min(s for s, _ in rest), max(e for _, e in rest)
        ),
        "first_kind_jobs_per_s": per_second(
            len(mine), min(s for s, _ in mine), max(e for _, e in mine)
        ),
        "first_kind_started_after_s": min(s for s, _ in mine) - began,
        "first_kind_most_running": most_at_once(mine),
    }
    if workload == "rate":
        count_limit, window = RATE
        starts = sorted(s for s, _ in mine)
        figures["rated_most_in_window"] = most_in_window(starts, window)
        figures["rated_paced_starts_per_s"] = per_second(
            len(starts) - count_limit, starts[0], starts[-1]
        )
    return figures


# ---------------------------------------------------------------- driver


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000, help="jobs per drain, 4 kinds")
    parser.add_argument("--rate-jobs", type=int, default=3_000, help="0: no rate workload")
    parser.add_argument(
        "--backlog", type=int, default=0, help="jobs of a limited kind queued first; 0: none"
    )
    parser.add_argument("--out", default="bench-results/limits.json")
    args = parser.parse_args()

    workloads = ["unlimited", "limited"] + (["rate"] if args.rate_jobs else [])
    workloads += ["backlog"] if args.backlog else []
    results: dict[str, list[dict[str, float]]] = {name: [] for name in workloads}
    with migrated_cluster() as dsn, delta.Client.connect(dsn) as client:
        for run in range(args.runs):
            pair = ["unlimited", "limited"] if run % 2 == 0 else ["limited", "unlimited"]
            for workload in pair + workloads[2:]:
                extra = args.backlog if workload == "backlog" else args.rate_jobs
                results[workload].append(bench_drain(client, dsn, workload, args.count, extra))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    rows = [
        ("unlimited", "total_jobs_per_s", "unlimited: total jobs/s"),
        ("unlimited", "first_kind_jobs_per_s", "unlimited: kind a jobs/s"),
        ("unlimited", "others_jobs_per_s", "unlimited: kinds b-d jobs/s"),
        ("unlimited", "first_kind_most_running", "unlimited: most of a at once"),
        ("limited", "total_jobs_per_s", f"limited: total jobs/s (a at {CONCURRENCY})"),
        ("limited", "first_kind_jobs_per_s", "limited: kind a jobs/s"),
        ("limited", "others_jobs_per_s", "limited: kinds b-d jobs/s"),
        ("limited", "first_kind_started_after_s", "limited: a's first start, s"),
        ("limited", "first_kind_most_running", "limited: most of a at once"),
    ]
    if "rate" in results:
        rows += [
            ("rate", "rated_paced_starts_per_s", f"rate: r paced starts/s ({RATE[0]}/{RATE[1]}s)"),
            ("rate", "rated_most_in_window", f"rate: most r starts in {RATE[1]} s"),
            ("rate", "others_jobs_per_s", "rate: kinds b-d jobs/s"),
        ]
    if "backlog" in results:
        rows += [
            ("backlog", "others_jobs_per_s", f"backlog: kinds b-d jobs/s ({args.backlog:,} a)"),
            ("backlog", "first_kind_jobs_per_s", "backlog: kind a jobs/s"),
        ]
    print(f"\n{'metric':<38}{'median':>10}  runs")
    for workload, key, label in rows:
        values = [figures[key] for figures in results[workload]]
        shown = " / ".join(_figure(v) for v in values)
        print(f"{label:<38}{_figure(statistics.median(values)):>10}  {shown}")
    ratios = {
        key: statistics.median(f[key] for f in results["limited"])
        / statistics.median(f[key] for f in results["unlimited"])
        for key in ("total_jobs_per_s", "others_jobs_per_s", "first_kind_jobs_per_s")
    }
    print("\nlimited / unlimited, ratio of medians: " + ", ".join(
        f"{key} {ratio:.2f}" for key, ratio in ratios.items()
    ))  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {"count": args.count, "rate_jobs": args.rate_jobs},
        "limits": {"concurrency": CONCURRENCY, "rate": RATE},
        "runs": results,
        "ratios": ratios,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()

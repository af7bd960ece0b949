"""Benchmark informs and resource sync on a throwaway PostgreSQL cluster.

Measures, each `--runs` times (median reported):
- inform_many of new objects, objects/s (batches of `--batch`);
- inform_many of unchanged objects (the skip path), objects/s;
- end to end: resources/s from the first inform to the last synced, one worker process
  at concurrency 100 with a no-op controller (`--subscribe`: while a subscriber takes
  every event).

Prints a table and writes JSON (`--out`). Usage: python scripts/bench_inform.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import Item, finish_worker, reset, start_worker

import delta_actors as delta
from delta_actors.db import migrations
from delta_actors.local.cluster import throwaway_cluster


def inform_all(client: delta.Client, items: list[Item], batch: int) -> float:
    """Inform `items` in batches; return objects/s."""
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        client.inform_many(items[start : start + batch])
    return len(items) / (time.perf_counter() - started)


def bench_informs(client: delta.Client, dsn: str, count: int, batch: int) -> tuple[float, float]:
    reset(dsn)
    items = [Item(key=f"item-{i}", value=i) for i in range(count)]
    new_rate = inform_all(client, items, batch)
    unchanged_rate = inform_all(client, items, batch)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), max(generation) FROM delta_resource").fetchone()
    assert row == (count, 1), f"unexpected resources after re-inform: {row}"
    return new_rate, unchanged_rate


def bench_end_to_end(
    client: delta.Client, dsn: str, count: int, batch: int, subscribe: bool = False
) -> float:
    reset(dsn)
    proc = start_worker(dsn, 100, count, "resources")
    with contextlib.ExitStack() as stack:
        if subscribe:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE delta_event")  # no Cleaner runs here
            # A subscriber that takes every event: results write delta_event rows.
            subscription = client.subscribe()
            taken: list[int] = []
            drain = threading.Thread(target=lambda: taken.append(sum(1 for _ in subscription)))
            drain.start()
            # On exit: close (ends the iteration), join, then report.
            stack.callback(lambda: print(f"subscriber took {taken} items", file=sys.stderr))
            stack.callback(drain.join)
            stack.callback(subscription.close)
        started = time.time()
        inform_all(client, [Item(key=f"e2e-{i}") for i in range(count)], batch)
        result = finish_worker(proc)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'synced'), count(*) FROM delta_resource"
        ).fetchone()
    assert row == (count, count), f"not every resource synced: {row}"
    return count / (float(result["finished_at"]) - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument(
        "--subscribe", action="store_true", help="end to end with a subscriber taking events"
    )
    parser.add_argument("--out", default="bench-results/inform.json")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.count = 1, 5_000

    cluster = throwaway_cluster()
    try:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        results: dict[str, list[float]] = {
            "inform_new_objects_per_s": [],
            "inform_unchanged_objects_per_s": [],
            "end_to_end_resources_per_s": [],
        }
        with delta.Client.connect(dsn) as client:
            for run in range(args.runs):
                new, unchanged = bench_informs(client, dsn, args.count, args.batch)
                results["inform_new_objects_per_s"].append(new)
                results["inform_unchanged_objects_per_s"].append(unchanged)
                results["end_to_end_resources_per_s"].append(
                    bench_end_to_end(client, dsn, args.count, args.batch, args.subscribe)
                )
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        cluster.remove()

    targets = {
        "inform_new_objects_per_s": 20_000,
        "inform_unchanged_objects_per_s": 50_000,
        "end_to_end_resources_per_s": 5_000,
    }
    print(f"\n{'metric':<32}{'median':>12}{'runs':>32}  target")
    for name, values in results.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:<32}{statistics.median(values):>12,.0f}{shown:>32}  >= {targets[name]:,}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sizes": {"count": args.count, "batch": args.batch},
        "runs": results,
        "median": {name: statistics.median(values) for name, values in results.items()},
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

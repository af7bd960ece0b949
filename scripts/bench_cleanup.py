"""Benchmark the leader's cleaner: how fast finished rows go once they are due.

On a throwaway cluster, inserts `--rows` finished rows past their retention (plain jobs,
completed, and works of resources, half each), plus `--kept` finished rows that are not
yet due, then runs the Cleaner as the leader does (`run_once` until a run deletes
nothing) and reports rows deleted per second, the runs it took and the longest run, for
each `--limit` (rows per statement). Usage:

    python scripts/bench_cleanup.py [--rows 1000000] [--kept 100000] [--limit 1000 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import migrated_cluster

import delta_actors as delta
from delta_actors.leader.maintenance import Cleaner

FILL = """
INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt, finalized_at,
                       resource_id)
SELECT 'noop', 'default', '\\x', 1, 'completed', 1,
       now() - make_interval(secs => %(age)s) - make_interval(secs => g / 1000.0),
       CASE WHEN %(works)s THEN 1000000000 + g END
FROM generate_series(1, %(n)s) AS g
"""


def fill(dsn: str, rows: int, kept: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        half = rows // 2
        conn.execute(FILL, {"age": 3 * 86400, "works": False, "n": half})  # completed jobs
        conn.execute(FILL, {"age": 2 * 3600, "works": True, "n": rows - half})  # works
        conn.execute(FILL, {"age": 60, "works": True, "n": kept})  # not due yet
        conn.execute("VACUUM ANALYZE delta_job")


async def clean(dsn: str, limit: int) -> tuple[int, int, float, float]:
    app = delta.App()
    async with AsyncConnectionPool(dsn, kwargs={"autocommit": True}, open=False) as pool:
        cleaner = Cleaner(app, pool, limit=limit)
        deleted = runs = 0
        longest = 0.0
        started = time.perf_counter()
        while True:
            run_started = time.perf_counter()
            did = await cleaner.run_once()
            longest = max(longest, time.perf_counter() - run_started)
            runs += 1
            deleted += did["jobs"]
            if not did["jobs"]:
                break
        return deleted, runs, longest, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished rows past due")
    parser.add_argument("--kept", type=int, default=100_000, help="finished rows not yet due")
    parser.add_argument("--limit", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    print(f"{'limit':>6}  {'deleted':>9}  {'rows/s':>8}  {'runs':>4}  {'longest run':>11}")
    with migrated_cluster() as dsn:
        for limit in args.limit:
            fill(dsn, args.rows, args.kept)
            deleted, runs, longest, seconds = uvloop.run(clean(dsn, limit))
            with psycopg.connect(dsn, autocommit=True) as conn:
                left = conn.execute("SELECT count(*) FROM delta_job").fetchone()
                conn.execute("TRUNCATE delta_job")
            assert left == (args.kept,), f"{left} rows left, expected the {args.kept} not due"
            print(
                f"{limit:>6}  {deleted:>9,}  {deleted / seconds:>8,.0f}  {runs:>4}  "
                f"{longest:>10.1f}s"
            )


if __name__ == "__main__":
    main()

"""CPU-heavy controllers under `delta-actors supervise`: processes=1 versus processes=2.

A controller spends about 20 ms of pure-Python hashing per resource (a plain `def work`,
so it runs off the event loop). The script runs supervise on a throwaway cluster with the
heavy namespace at 1 and then 2 processes, interleaved `--runs` times, and reports
resources/s and the ratio. While the heavy namespace is saturated it also informs light
resources in another namespace and reports their inform-to-synced latency, to show that
a CPU-heavy namespace does not delay another namespace's light work.

Usage: python scripts/bench_cpu.py [--runs 3] [--count 300]
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
from pathlib import Path

import psycopg
from benchlib import migrated_cluster, wait_registered

import delta_actors as delta

PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))
HASH_ROUNDS = int(os.environ.get("BENCH_HASH_ROUNDS", "0"))


class Heavy(delta.Object, kind="heavy"):
    key: str

    def id(self) -> str:
        return self.key


class Light(delta.Object, kind="light"):
    key: str
    sent_at: float = 0.0

    def id(self) -> str:
        return self.key


def fnv_rounds(data: bytes, rounds: int) -> int:
    """Pure-Python FNV-1a, `rounds` times over `data`: CPU work that holds the GIL."""
    value = 0xCBF29CE484222325
    for _ in range(rounds):
        for byte in data:
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


class HeavyController(delta.Controller[Heavy]):
    namespace = "heavy"

    def work(self, resource: delta.Resource[Heavy]) -> None:
        fnv_rounds(resource.object.key.encode().ljust(64, b"."), HASH_ROUNDS)


class LightController(delta.Controller[Light]):
    namespace = "light"

    async def work(self, resource: delta.Resource[Light]) -> None:
        dsn = os.environ["DELTA_DATABASE_URL"]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO bench_light (latency) VALUES (%s)",
                (time.time() - resource.object.sent_at,),
            )


app = delta.App(
    controllers=[HeavyController(), LightController()],
    namespaces={
        "heavy": delta.Namespace(max_workers=4, processes=PROCESSES),
        "light": delta.Namespace(max_workers=10),
    },
)


def calibrate() -> int:
    """Rounds of fnv_rounds that take about 20 ms on this machine."""
    data = b"h0".ljust(64, b".")
    rounds, elapsed = 10, 0.0
    while elapsed < 0.05:
        rounds *= 2
        started = time.perf_counter()
        fnv_rounds(data, rounds)
        elapsed = time.perf_counter() - started
    return max(1, int(rounds * 0.020 / elapsed))


def count_synced(dsn: str, kind: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM delta_resource WHERE kind = %s AND state = 'synced'", (kind,)
        ).fetchone()
    return int(row[0]) if row else 0


def run_once(dsn: str, processes: int, count: int, rounds: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE delta_job, delta_resource, delta_actor")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_light (latency float8)")
        conn.execute("TRUNCATE bench_light")
    env = {
        **os.environ,
        "DELTA_DATABASE_URL": dsn,
        "BENCH_PROCESSES": str(processes),
        "BENCH_HASH_ROUNDS": str(rounds),
        "PYTHONPATH": str(Path(__file__).parent),
    }
    argv = [sys.executable, "-c", "from delta_actors.ops.cli import main; main()", "supervise",
            "--app", "bench_cpu:app", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env)
    try:
        wait_registered(dsn, proc, processes + 2)  # heavy actors, the light one, the leader
        with delta.Client.connect(dsn, app=app) as client:
            started = time.perf_counter()
            client.inform_many([Heavy(key=f"h{i}") for i in range(count)])
            # Light work arrives while the heavy namespace is saturated.
            for i in range(20):
                client.inform(Light(key=f"l{i}", sent_at=time.time()))
                time.sleep(0.05)
            while count_synced(dsn, "heavy") < count:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            latencies = sorted(r[0] * 1000 for r in conn.execute("SELECT latency FROM bench_light"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {
        "resources_per_s": count / elapsed,
        "light_p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "light_max_ms": latencies[-1] if latencies else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--out", default="bench-results/cpu.json")
    args = parser.parse_args()
    rounds = calibrate()
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with migrated_cluster() as dsn:
        for run in range(args.runs):
            for processes in (1, 2):
                results[processes].append(run_once(dsn, processes, args.count, rounds))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    medians = {
        p: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for p, runs in results.items()
    }
    print(
        f"\nCPU-bound controller, ~20 ms per resource ({rounds} FNV rounds), {args.count} resources"
    )
    print(f"{'processes':<10}{'resources/s':>14}{'light p50 ms':>14}{'light max ms':>14}")
    for p in (1, 2):
        m = medians[p]
        print(
            f"{p:<10}{m['resources_per_s']:>14.1f}{m['light_p50_ms']:>14.1f}{m['light_max_ms']:>14.1f}"
        )
    ratio = medians[2]["resources_per_s"] / medians[1]["resources_per_s"]
    print(f"\nspeed-up with processes=2: {ratio:.2f}x (median of {args.runs} interleaved runs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": rounds, "runs": results, "median": medians,
                               "speedup": ratio}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark what metrics cost: counting a run, a heartbeat's frame, a scrape.

No database needed. Each figure is the median of `--runs` runs (default 5):
- observe: one `Recorder.observe` (what every finished work pays), ns per call;
- heartbeat: snapshot + encode of a Heartbeat carrying `--kinds` kinds, us, and its bytes;
- scrape: collect + text exposition of 4 actors x `--kinds` kinds, ms.

Usage: python scripts/bench_metrics.py [--runs 5] [--kinds 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

from prometheus_client import CollectorRegistry, generate_latest

from delta_actors.queue import results as outcome
from delta_actors.runtime import protocol
from delta_actors.runtime.metrics import Recorder, SupervisorMetrics


def _recorder(kinds: int) -> Recorder:
    recorder = Recorder()
    for i in range(kinds * 30):
        result = (outcome.work_synced(i, 1, 1), outcome.work_failed(i, 1, 1, 1.0, "{}"),
                  outcome.work_requeued(i, 1, 1, 1.0))[i % 3]  # fmt: skip
        recorder.observe(f"kind{i % kinds}", result, (i % 100) / 50)
    return recorder


def _heartbeat(recorder: Recorder) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        running=5, claimed=100, completed=90, failed=10, queue_depth=3, queue_lag=0.5,
        max_workers=20, kinds=recorder.snapshot(),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kinds", type=int, default=10)
    args = parser.parse_args()

    recorder = _recorder(args.kinds)
    result = outcome.work_synced(1, 1, 1)
    calls = 200_000
    observe = [
        timeit.timeit(lambda: recorder.observe("kind1", result, 0.03), number=calls) / calls * 1e9
        for _ in range(args.runs)
    ]
    beats = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for _ in range(1000):
            frame = protocol.encode(_heartbeat(recorder))
        beats.append((time.perf_counter() - start) / 1000 * 1e6)
    metrics = SupervisorMetrics()
    for index in range(4):
        name = f"worker:ns{index}:0"
        metrics.actor_started(name, f"ns{index}")
        metrics.actor_heartbeat(name, _heartbeat(recorder))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    scrapes = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for _ in range(100):
            body = generate_latest(registry)
        scrapes.append((time.perf_counter() - start) / 100 * 1e3)

    def row(name: str, values: list[float], unit: str) -> None:
        shown = " / ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} {unit} | {shown} |")

    print("| metric | median | runs |\n|---|---|---|")
    row("Recorder.observe", observe, "ns")
    row(f"heartbeat snapshot + encode ({args.kinds} kinds, {len(frame)} bytes)", beats, "us")
    row(f"scrape (4 actors x {args.kinds} kinds, {len(body)} bytes)", scrapes, "ms")


if __name__ == "__main__":
    main()

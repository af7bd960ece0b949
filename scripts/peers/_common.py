"""Shared by the peer drivers: argv parsing, the result line, percentiles."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop


class Span:
    """From the first job's start to the last job's end, marked by the peer's handler.

    A drain's rate over this span leaves out the peer's start-up, its first fetch, its
    last completion writes and its final empty poll: generous to the peer.
    """

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0

    def start(self) -> None:
        if not self.first:
            self.first = time.perf_counter()

    def end(self) -> None:
        self.last = time.perf_counter()

    def rate(self, count: float) -> float:
        return count / (self.last - self.first)


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


def latency_result(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}


async def until_recorded(latencies: list[float], count: float, worker: asyncio.Task[Any]) -> None:
    """Wait until the peer's handler recorded `count` latencies (or its worker ended).

    The handler runs inside the peer's worker, so polling the list is the only hook.
    """
    while len(latencies) < count and not worker.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def run(ops: dict[str, Callable[..., Awaitable[dict[str, object]]]]) -> None:
    """argv: <dsn> <op> [numbers...]; print the op's result as one JSON line.

    Every peer runs on uvloop, as delta_actors does.
    """
    dsn, op, *numbers = sys.argv[1:]
    result = uvloop.run(ops[op](dsn, *(float(n) for n in numbers)))
    print(json.dumps(result), flush=True)

"""pgqueuer 1.x workloads (run by scripts/bench_peers.py with the peers' venv).

Settings: documented defaults (QueueManager) with those of pgqueuer's own benchmark
(tools/benchmark.py) for throughput: the asyncpg driver (AsyncpgDriver; its PsycopgDriver
drained 3-4x slower here) on uvloop; `max_concurrent_tasks` as given and `batch_size`
half of it (the most it allows; default 10); drain mode.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from _common import Span, latency_result, percentile, run, until_recorded
from pgqueuer import AsyncpgDriver, QueueManager
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


@asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        if not conn.is_closed():
            await conn.close()


async def setup(dsn: str) -> dict[str, object]:
    async with connect(dsn) as conn:
        await Queries(AsyncpgDriver(conn)).install()
    return {}


async def reset(dsn: str) -> None:
    async with connect(dsn) as conn:
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
        await conn.execute("VACUUM ANALYZE pgqueuer")


async def bulk(dsn: str, count: float) -> dict[str, object]:
    await reset(dsn)
    n = int(count)
    async with connect(dsn) as conn:
        queries = Queries(AsyncpgDriver(conn))
        started = time.perf_counter()
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        return {"rate": count / (time.perf_counter() - started)}


async def drain(dsn: str, count: float, concurrency: float) -> dict[str, object]:
    await reset(dsn)
    n, c = int(count), int(concurrency)
    async with connect(dsn) as conn:
        await Queries(AsyncpgDriver(conn)).enqueue(["noop"] * n, [None] * n, [0] * n)
    async with connect(dsn) as conn:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        span = Span()

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            span.start()
            span.end()

        batch = max(1, c // 2)
        await qm.run(batch_size=batch, max_concurrent_tasks=c, mode=QueueExecutionMode.drain)
    async with connect(dsn) as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM pgqueuer),"
            " (SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful')"
        )
    assert tuple(row) == (0, n), f"not every job succeeded exactly once (left, done): {row}"
    return {"rate": span.rate(count)}


async def latency(dsn: str, count: float, rate: float) -> dict[str, object]:
    await reset(dsn)
    latencies: list[float] = []
    async with connect(dsn) as conn, connect(dsn) as enqueue_conn:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            assert job.payload is not None
            latencies.append(time.time() - struct.unpack("d", job.payload)[0])

        worker = asyncio.create_task(qm.run(dequeue_timeout=timedelta(seconds=30)))
        await asyncio.sleep(1.0)
        queries = Queries(AsyncpgDriver(enqueue_conn))
        next_at = time.perf_counter()
        for _ in range(int(count)):
            next_at += 1.0 / rate
            await queries.enqueue("noop", struct.pack("d", time.time()))
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await until_recorded(latencies, count, worker)
        qm.shutdown.set()
        await worker
    return latency_result(latencies)


async def steady(dsn: str, seconds: float, rate: float) -> dict[str, object]:
    """Enqueue `rate` jobs/s for `seconds` while one QueueManager (concurrency 100)
    drains them; per minute: started/s, lag p50/p99 and the backlog at its end."""
    await reset(dsn)
    started_at: list[tuple[float, float]] = []  # (start, lag) of each job, seconds
    tick = 0.02
    async with connect(dsn) as conn, connect(dsn) as enqueue_conn:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            assert job.payload is not None
            now = time.time()
            started_at.append((now, now - struct.unpack("d", job.payload)[0]))

        worker = asyncio.create_task(
            qm.run(batch_size=50, max_concurrent_tasks=100, dequeue_timeout=timedelta(seconds=1))
        )
        await asyncio.sleep(1.0)
        queries = Queries(AsyncpgDriver(enqueue_conn))
        begin = time.time()
        enqueued: list[float] = []
        owed = 0.0
        next_at = time.perf_counter()
        while time.time() - begin < seconds:
            owed += rate * tick
            n, owed = int(owed), owed - int(owed)
            if n:
                now = time.time()
                payload = struct.pack("d", now)
                await queries.enqueue(["noop"] * n, [payload] * n, [0] * n)
                enqueued += [now] * n
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.sleep(5.0)
        qm.shutdown.set()
        await worker
    minutes = []
    for m in range(int(seconds // 60)):
        lo, hi = begin + 60 * m, begin + 60 * (m + 1)
        lags = sorted(lag * 1000 for at, lag in started_at if lo <= at < hi)
        backlog = sum(1 for at in enqueued if at < hi) - sum(1 for at, _ in started_at if at < hi)
        minutes.append({
            "minute": m + 1, "started_per_s": len(lags) / 60.0, "backlog": backlog,
            "enqueued_per_s": sum(1 for at in enqueued if lo <= at < hi) / 60.0,
            "p50_ms": percentile(lags, 50) if lags else 0.0,
            "p99_ms": percentile(lags, 99) if lags else 0.0,
        })  # fmt: skip
    return {"sent": len(enqueued), "per_minute": minutes}


if __name__ == "__main__":
    run({"setup": setup, "bulk": bulk, "drain": drain, "latency": latency, "steady": steady})

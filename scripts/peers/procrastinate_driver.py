"""procrastinate 3.x workloads (run by scripts/bench_peers.py with the peers' venv).

Settings: documented defaults (PsycopgConnector, default pool); throughput settings: the
worker's `concurrency` as given, `wait=False` for the drain so it stops when empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import procrastinate
import psycopg
from _common import Span, latency_result, run, until_recorded

latencies: list[float] = []
span = Span()


def make_app(dsn: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop(sent_at: float = 0.0) -> None:
        span.start()
        if sent_at:
            latencies.append(time.time() - sent_at)
        span.end()

    return app


async def setup(dsn: str) -> dict[str, object]:
    async with make_app(dsn).open_async() as app:
        await app.schema_manager.apply_schema_async()
    return {}


async def reset(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE procrastinate_jobs CASCADE")
        await conn.execute("VACUUM ANALYZE procrastinate_jobs")


async def bulk(dsn: str, count: float) -> dict[str, object]:
    await reset(dsn)
    async with make_app(dsn).open_async() as app:
        task = app.tasks["noop"]
        started = time.perf_counter()
        await task.batch_defer_async(*({} for _ in range(int(count))))
        return {"rate": count / (time.perf_counter() - started)}


async def drain(dsn: str, count: float, concurrency: float) -> dict[str, object]:
    await reset(dsn)
    async with make_app(dsn).open_async() as app:
        await app.tasks["noop"].batch_defer_async(*({} for _ in range(int(count))))
        await app.run_worker_async(concurrency=int(concurrency), wait=False)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM procrastinate_jobs"
        )
        row = await cur.fetchone()
    assert row == (int(count), int(count)), f"not every job succeeded exactly once: {row}"
    return {"rate": span.rate(count)}


async def latency(dsn: str, count: float, rate: float) -> dict[str, object]:
    await reset(dsn)
    async with make_app(dsn).open_async() as app:
        worker = asyncio.create_task(app.run_worker_async(concurrency=10))
        await asyncio.sleep(1.0)
        next_at = time.perf_counter()
        for _ in range(int(count)):
            next_at += 1.0 / rate
            await app.tasks["noop"].defer_async(sent_at=time.time())
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await until_recorded(latencies, count, worker)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return latency_result(latencies)


if __name__ == "__main__":
    run({"setup": setup, "bulk": bulk, "drain": drain, "latency": latency})

"""LISTEN on the job channel and wake the producer of one queue.

The listener owns one dedicated connection (LISTEN cannot share a pooled one). When that
connection breaks (or anything else goes wrong) it reconnects with backoff and wakes the
producer once it is back, since notifications sent meanwhile are lost; polling covers the
gap. Each (re)connection is progress; while it listens it is idle (health.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from delta_actors.cancellation import raise_if_cancelling
from delta_actors.db import job_sql
from delta_actors.db.connection import component_conninfo
from delta_actors.health import Progress, log_failure

logger = logging.getLogger(__name__)


class Listener:
    """Calls `on_notify` for every notification on the job channel naming `queue`."""

    def __init__(
        self,
        dsn: str,
        queue: str,
        on_notify: Callable[[], None],
        progress: Progress | None = None,
    ) -> None:
        self._conninfo = component_conninfo(dsn, f"delta-listen-{queue}")
        self._queue = queue
        self._on_notify = on_notify
        self._progress = progress or Progress("listener", 1.0)
        self.is_listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after failures."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(job_sql.JOB_CHANNEL))
                    )
                    self.is_listening.set()
                    self._progress.ok()
                    delay = 0.1
                    self._on_notify()  # anything sent while we were not listening
                    async for notify in conn.notifies():
                        if notify.payload == self._queue:
                            self._on_notify()
            except Exception as exc:  # noqa: BLE001 (polling covers the gap; logged, retried)
                self.is_listening.clear()
                self._progress.failed(exc)
                log_failure(
                    logger, f"listen connection failed, reconnecting in {delay:.1f}s", exc,
                    "listener.reconnect",
                )  # fmt: skip
            raise_if_cancelling()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

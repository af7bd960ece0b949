"""Starting in-process workers for tests, always stopped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import delta_actors as delta


@asynccontextmanager
async def running_worker(
    app: delta.App, dsn: str, *, stop_timeout: float = 5.0, **options: Any
) -> AsyncIterator[delta.Worker]:
    """A started Worker (no backoff between retries unless told), stopped on exit."""
    options.setdefault("retry_policy", lambda attempt: 0.0)
    options.setdefault("poll_interval", 0.2)
    worker = delta.Worker(app, dsn, **options)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(timeout=stop_timeout)

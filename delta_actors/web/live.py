"""`GET /live`: server-sent events that tell an open page to refresh its live parts.

One stream per open tab, each with its own `subscribe` subscription (one connection, one
`delta_subscriber` lease), filtered by `kind` and, on a resource's page, `id`. The stream
sends `change` when an event of a matching resource arrives (at most one per
COALESCE_INTERVAL: a burst of results is one refresh) and `tick` every TICK_INTERVAL
seconds, so that what no event reports (queue depth, heartbeats, a pause) stays fresh.

Ending: when the tab closes, the server sees the disconnect and cancels the stream; its
`async with` gives the lease up and closes the connection, so events stop being written
for it. A subscription that fails (its database lost for good) ends the stream, logged;
the browser's EventSource reconnects after `retry`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from delta_actors.errors import DeltaError
from delta_actors.events import AsyncSubscription, Event
from delta_actors.model.names import validate_name
from delta_actors.web.console import Console
from delta_actors.web.views import opened

logger = logging.getLogger(__name__)
TICK_INTERVAL = 5.0  # seconds between ticks
COALESCE_INTERVAL = 0.5  # seconds: at most one `change` this often
RETRY = 2000  # milliseconds before the browser reconnects a lost stream


async def stream(request: Request) -> Response:
    console = await opened(request)
    kind = request.query_params.get("kind") or None
    object_id = request.query_params.get("id") or None
    if kind is not None:
        validate_name(kind, "kind")
    return StreamingResponse(
        _events(console, kind, object_id),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def _events(console: Console, kind: str | None, object_id: str | None) -> AsyncIterator[str]:
    yield f"retry: {RETRY}\n\n"
    subscription = console.client.subscribe(kinds=[kind] if kind else None)
    try:
        await subscription.start()
        yield _message("ready", {})
        async for message in _messages(subscription, object_id):
            yield message
    except DeltaError as exc:
        logger.warning(
            "console live stream ended: %s", exc, extra={"event": "web.live_failed"}
        )  # fmt: skip
    finally:
        # The server cancels a stream whose client left, and anyio's cancellation is
        # delivered at every await of the cancelled scope: shielded, the lease is given
        # up and the connection closed instead of both being cut off halfway.
        with anyio.CancelScope(shield=True):
            await subscription.aclose()


async def _messages(subscription: AsyncSubscription, object_id: str | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    last_change, pending = 0.0, False
    while True:
        timeout = COALESCE_INTERVAL if pending else TICK_INTERVAL
        try:
            item = await asyncio.wait_for(anext(subscription), timeout)
        except TimeoutError:
            # A change held back by the coalescing goes out now, else a tick.
            yield _message("change" if pending else "tick", {})
            last_change, pending = loop.time(), False
            continue
        if isinstance(item, Event) and object_id is not None and item.id != object_id:
            continue
        if loop.time() - last_change < COALESCE_INTERVAL:
            pending = True
            continue
        last_change, pending = loop.time(), False
        # A Gap says something changed, not what.
        data = {"kind": item.kind, "id": item.id, "event": item.event.value} if isinstance(
            item, Event) else {}  # fmt: skip
        yield _message("change", data)


def _message(event: str, data: Mapping[str, object]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"

"""A TCP proxy to the test's PostgreSQL that can turn into a black hole, as a partition does.

Forwarding, it relays bytes both ways. `swallow()` stops relaying without closing
anything: what either side sends is left unread, and new connections are accepted and
then ignored, so the client sees a server that just never answers (a cut cable, a
dropped route), not a reset. No privileges needed; it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg


class Blackhole:
    """`async with Blackhole(dsn) as hole:` then connect to `hole.dsn`."""

    def __init__(self, dsn: str) -> None:
        self._target = psycopg.conninfo.conninfo_to_dict(dsn)
        self._dsn = dsn
        self._open = asyncio.Event()
        self._open.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._relays: set[asyncio.Task[None]] = set()  # ours to end in __aexit__
        self._server: asyncio.Server | None = None
        self.dsn = ""

    async def __aenter__(self) -> Blackhole:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.dsn = psycopg.conninfo.make_conninfo(self._dsn, host="127.0.0.1", port=str(port))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    def swallow(self) -> None:
        """From now on nothing gets through, either way, on any connection."""
        self._open.clear()

    def release(self) -> None:
        """Relay again (the partition heals): what was held back goes through."""
        self._open.set()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host = str(self._target.get("host") or "/var/run/postgresql")
        port = int(self._target.get("port") or 5432)
        if host.startswith("/"):
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        self._writers.append(writer)
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._open.wait()  # accepted, never answered, while swallowing
            up_reader, up_writer = await self._upstream()
            self._writers.append(up_writer)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer))
                group.create_task(self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._open.wait()
                if writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        writer.close()

"""`delta-actors web`: serve the console with uvicorn until SIGINT/SIGTERM.

The binding is checked before anything else (security.check_binding), then the database:
a DSN that does not connect or a schema that is not migrated stops the start with its
DatabaseError (redacted), exit 2. Open live streams are given
SHUTDOWN_TIMEOUT seconds when the server stops, then closed. uvicorn's access log shows
paths, never the DSN; the DSN shown is redacted.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

from delta_actors.db.connection import connect, redact_dsn, translate_errors
from delta_actors.db.migrations import check_schema
from delta_actors.web.app import create_app
from delta_actors.web.security import check_binding

logger = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT = 3  # seconds for open streams when the server stops


def serve(
    dsn: str, *, host: str, port: int, read_only: bool, token: str | None, access_log: bool
) -> None:
    """Serve the console on host:port (blocking)."""
    check_binding(host, token)
    # The database first, in one line: a DSN that does not connect or a schema that is
    # not migrated is a DeltaError the command prints, not a traceback from the server.
    with connect(dsn, action="open the console") as conn, translate_errors("open the console"):
        check_schema(conn)
    import uvicorn

    app = create_app(dsn, read_only=read_only, token=token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=access_log,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT, lifespan="on", log_config=None,
    )  # fmt: skip
    logger.info(
        "console for %s on http://%s:%d/%s", redact_dsn(dsn), host, port,
        " (read-only)" if read_only else "", extra={"event": "web.start"},
    )  # fmt: skip
    server = _server_class()(config)
    server.run()
    if not server.started:
        raise SystemExit(2)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a stop by SIGTERM or SIGINT exits 0, as supervise does
        (uvicorn raises the signal again once it has shut down)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(sig: int, frame: FrameType | None) -> None:
                self.handle_exit(sig, frame)

            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, stop) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server

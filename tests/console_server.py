"""The console under test: a real uvicorn serving `create_app` on a free loopback port,
in a thread of the test process, against the test's own database (the `serve_console`
fixture, a plugin of tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import uvicorn

from delta_actors.web import create_app
from tests.waiting import wait_until


class Served:
    """One console server; `url` is its base URL."""

    def __init__(self, dsn: str, app: object = None, **options: object) -> None:
        self.app = app or create_app(dsn, **options)  # type: ignore[arg-type]
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=2, log_config=None,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 20, "uvicorn")
        assert self.server.started, "the console did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the console did not stop"


@pytest.fixture
def serve_console(dsn: str) -> Iterator[Callable[..., Served]]:
    """Start consoles on the test's database with `serve_console(**options)`."""
    started: list[Served] = []

    def start(database: str | None = None, app: object = None, **options: object) -> Served:
        served = Served(database or dsn, app, **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()

"""Running real `delta-actors supervise` processes against the test's database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.apps import RUNS_TABLE
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
UNHANDLED = re.compile(r"never retrieved|unhandled error in the event loop")


class Supervise:
    """One `delta-actors supervise` process; its log is kept in a file."""

    def __init__(
        self,
        dsn: str,
        log_dir: Path,
        *args: str,
        app: str = "tests.e2e.apps:app",
        runtime_dsn: str | None = None,
    ):
        """`runtime_dsn`: what the supervisor and its actors connect to, when not `dsn`
        (a proxy in front of it); the test's own reads go to `dsn`."""
        self.dsn = dsn
        self.log_path = log_dir / f"supervise-{time.monotonic_ns()}.log"
        env = {**os.environ, "DELTA_DATABASE_URL": runtime_dsn or dsn, "PYTHONPATH": str(ROOT)}
        argv = [
            sys.executable, "-c", "from delta_actors.ops.cli import main; main()", "supervise",
            "--app", app, "--heartbeat-interval", "0.5", "--hang-timeout", "3",
            "--rescue-ttl", "5", *args,
        ]  # fmt: skip
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=log)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def actors(self) -> list[tuple[int, str, str]]:
        """(pid, namespace, role) of the registered actors of this supervisor's children."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT pid, namespace, role FROM delta_actor ORDER BY id")
            return [tuple(row) for row in rows]  # type: ignore[misc]

    def wait_started(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` actors registered."""
        wait_until(
            lambda: (self.proc.poll() is None and len(self.actors()) >= count) or self._died(),
            timeout,
            f"{count} actors to start",
        )

    def _died(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"supervise exited {self.proc.returncode}:\n{self.log}")
        return False

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        terminate(self.proc)

    def unhandled_errors(self) -> list[str]:
        """Log lines of errors nobody handled (a task exception never retrieved)."""
        return [line for line in self.log.splitlines() if UNHANDLED.search(line)]


def terminate(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM (a graceful stop), SIGKILL if it is not over in `timeout`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def e2e_dsn(dsn: str) -> str:
    """A migrated database with the table the e2e apps record their runs in."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RUNS_TABLE)
    return dsn


@pytest.fixture
def supervise(e2e_dsn: str, tmp_path: Path) -> Iterator[type[Supervise]]:
    """Start supervisors with `supervise(*args)`; all are stopped after the test."""
    started: list[Supervise] = []

    def start(*args: str, app: str = "tests.e2e.apps:app") -> Supervise:
        process = Supervise(e2e_dsn, tmp_path, *args, app=app)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        process.stop()
    # Every task has an owner: an error the event loop had to report is a bug.
    unhandled = {p.log_path.name: p.unhandled_errors() for p in started}
    assert not any(unhandled.values()), f"unhandled errors in the logs: {unhandled}"

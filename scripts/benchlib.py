"""What the benchmark scripts share: a migrated throwaway cluster, waiting for supervise."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from delta_actors.db import migrations
from delta_actors.local.cluster import throwaway_cluster


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so `finally` blocks remove the cluster."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


@contextmanager
def migrated_cluster() -> Iterator[str]:
    """A throwaway cluster with our schema; yields its DSN and removes it at exit."""
    exit_cleanly_on_sigterm()
    cluster = throwaway_cluster()
    try:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        yield dsn
    finally:
        cluster.remove()


def wait_registered(dsn: str, proc: subprocess.Popen[Any], count: int, timeout: float = 30) -> None:
    """Wait until `count` actors of a `supervise` process registered."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM delta_actor").fetchone()
        if row and row[0] >= count:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("supervise did not start its actors")
        time.sleep(0.05)

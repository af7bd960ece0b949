"""Each example runs with its one command and does what its docstring says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.e2e.conftest import ROOT
from tests.waiting import wait_until


@contextmanager
def running(argv: list[str], out: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """Run an example's command with its output folder in `out`; SIGTERM it afterwards."""
    log = out.parent / f"{out.name}.log"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "DELTA_EXAMPLE_OUT": str(out), **env}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdout=sink, stderr=sink, text=True
        )
    try:
        yield proc
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


def files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def states(dsn: str, kind: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state::text, count(*) FROM delta_resource WHERE kind = %s GROUP BY 1", (kind,)
        )
        return dict(rows.fetchall())  # type: ignore[arg-type]


SUPERVISE = [sys.executable, "-m", "delta_actors", "supervise"]


def test_quickstart_renders_a_report_per_customer(dsn, tmp_path):
    out = tmp_path / "reports"
    customers = (ROOT / "examples" / "quickstart" / "customers.jsonl").read_text().split("\n")
    expected = len([line for line in customers if line.strip()])
    with running([*SUPERVISE, "--app", "examples.quickstart.app:app", "--dsn", dsn], out):
        wait_until(lambda: len(files(out, "*.json")) == expected, 30, "a report per customer")
    assert states(dsn, "customer") == {"synced": expected}


def test_http_sync_follows_the_api_through_pages_changes_and_deletions(dsn, tmp_path):
    out = tmp_path / "products"
    with running([sys.executable, "-m", "examples.http_sync", "--dsn", dsn], out):
        # 25 products over 3 pages of 10.
        wait_until(lambda: len(files(out, "*.json")) >= 25, 30, "every product written")
        # The API changes a price every 2 s: a second generation is informed and worked.
        wait_until(
            lambda: any('"generation": 2' in p.read_text() for p in files(out, "*.json")),
            30, "a changed product worked again",
        )  # fmt: skip
        # Every third change deletes a product: the next full listing tombstones it.
        wait_until(lambda: states(dsn, "product").get("deleted", 0) >= 1, 40, "a tombstone")


def test_cpu_heavy_runs_in_two_processes(dsn, tmp_path):
    out = tmp_path / "digests"
    command = [*SUPERVISE, "--app", "examples.cpu_heavy.app:app", "--dsn", dsn]
    with running(command, out, CPU_HEAVY_COUNT="60"):
        wait_until(lambda: len(files(out, "*.txt")) == 60, 60, "60 digests")
    pids = {path.read_text().split()[1] for path in files(out, "*.txt")}
    assert len(pids) == 2, pids  # processes=2: both actors of the namespace took work
    assert states(dsn, "document") == {"synced": 60}

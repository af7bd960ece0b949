"""The examples, each run with its one documented command against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import delta_actors as delta
from examples.cpu_heavy.app import CHUNK_SIZE, CHUNKS, Chunk, count_primes
from examples.http_sync.app import Article
from examples.quickstart.app import Customer
from tests.e2e.conftest import ROOT, terminate
from tests.waiting import wait_until


class Example:
    """One example's command, with its output folder and log in tmp_path."""

    def __init__(self, dsn: str, tmp_path: Path, *argv: str) -> None:
        self.out = tmp_path / "out"
        self.log_path = tmp_path / "example.log"
        env = {
            **os.environ, "DELTA_DATABASE_URL": dsn, "DELTA_EXAMPLE_OUT": str(self.out),
            "PYTHONPATH": str(ROOT),
        }  # fmt: skip
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], env=env, cwd=ROOT, stdout=log, stderr=log
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def outputs(self) -> dict[str, dict[str, object]]:
        """The example's output files that are complete, by name."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the example exited {self.proc.returncode}:\n{self.log}")
        if not self.out.exists():
            return {}
        found = {}
        for path in self.out.glob("*.json"):
            try:  # written by a rename, so whole; but it may go between the glob and here
                found[path.stem] = json.loads(path.read_text())
            except FileNotFoundError:
                continue
        return found

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown) and return the exit code."""
        return terminate(self.proc)


def request(url: str, method: str, data: bytes | None = None) -> None:
    """Send one request to the example's API; fail on an HTTP error."""
    assert url.startswith("http://127.0.0.1:"), url
    urllib.request.urlopen(urllib.request.Request(url, data, method=method)).close()  # noqa: S310


@pytest.fixture
def run_example(dsn: str, tmp_path: Path) -> Iterator[type[Example]]:
    started: list[Example] = []

    def start(*argv: str) -> Example:
        example = Example(dsn, tmp_path, *argv)
        started.append(example)
        return example

    yield start  # type: ignore[misc]
    for example in started:
        example.stop()


def test_quickstart_renders_a_report_per_customer(run_example):
    """The README's command: every customer of customers.jsonl gets its report."""
    example = run_example("-m", "delta_actors", "supervise", "--app", "examples.quickstart.app:app")
    lines = (ROOT / "examples/quickstart/customers.jsonl").read_text().splitlines()
    emails = {json.loads(line)["email"] for line in lines if line.strip()}
    wait_until(lambda: len(example.outputs()) == len(emails), 20, "a report per customer")
    assert {report["customer"] for report in example.outputs().values()} == emails
    assert example.stop() == 0, example.log


def test_quickstart_removes_the_report_of_a_removed_customer(
    run_example, dsn, tmp_path, monkeypatch
):
    """Removing a customer's line deletes it at the next full listing (asked for at once
    with `delta-actors inform customer --full`), and its finalize removes the report."""
    source = tmp_path / "customers.jsonl"
    lines = [ln for ln in (ROOT / "examples/quickstart/customers.jsonl").read_text().splitlines()
             if ln.strip()]  # fmt: skip
    source.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("DELTA_EXAMPLE_SOURCE", str(source))
    example = run_example("-m", "delta_actors", "supervise", "--app", "examples.quickstart.app:app")
    wait_until(lambda: len(example.outputs()) == len(lines), 20, "a report per customer")
    gone = json.loads(lines[0])["email"]
    source.write_text("\n".join(lines[1:]) + "\n")
    subprocess.run(
        [sys.executable, "-m", "delta_actors", "inform", "customer", "--full"],
        env={**os.environ, "DELTA_DATABASE_URL": dsn}, check=True, timeout=30,
    )  # fmt: skip
    wait_until(
        lambda: gone not in {r["customer"] for r in example.outputs().values()}, 20,
        "the removed customer's report removed",
    )  # fmt: skip
    assert len(example.outputs()) == len(lines) - 1
    with delta.Client.connect(dsn) as client:
        removed = client.get(Customer, gone)
        assert removed is not None
        assert removed.state is delta.State.DELETED
    assert example.stop() == 0, example.log


def test_http_sync_follows_the_api_edits_and_deletions(run_example, dsn):
    """All pages are synced; an edit is picked up and a deletion becomes a tombstone."""
    example = run_example("-m", "examples.http_sync")
    wait_until(lambda: len(example.outputs()) == 25, 20, "25 articles written")
    lines = example.log.splitlines()
    url = next(line.split(": ", 1)[1] for line in lines if line.startswith("articles API"))
    request(f"{url}/articles/a001", "PUT", b'{"title": "Edited"}')
    request(f"{url}/articles/a002", "DELETE")
    with delta.Client.connect(dsn) as client:
        wait_until(lambda: example.outputs()["a001"]["title"] == "Edited", 20, "the edit synced")
        wait_until(
            lambda: client.get(Article, "a002").state == delta.State.DELETED, 20, "a tombstone"
        )
        assert client.get(Article, "a001").object.version == 2
        assert client.get(Article, "a003").state == delta.State.SYNCED
    assert example.stop() == 0, example.log


def test_cpu_heavy_counts_primes_on_two_processes(run_example, dsn):
    """Every chunk is counted correctly by the workers of the two-process namespace."""
    example = run_example("-m", "delta_actors", "supervise", "--app", "examples.cpu_heavy.app:app")
    wait_until(lambda: len(example.outputs()) == CHUNKS, 20, f"{CHUNKS} chunks counted")
    results = example.outputs()
    for i in range(CHUNKS):
        chunk = Chunk(start=i * CHUNK_SIZE, stop=(i + 1) * CHUNK_SIZE)
        assert results[chunk.id()]["primes"] == count_primes(chunk.start, chunk.stop)
    assert sum(result["primes"] for result in results.values()) == 27_608  # the primes below 320000
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM delta_actor WHERE namespace = 'cpu' AND role = 'worker'"
        ).fetchall()
    cpu_actors = {pid for (pid,) in rows}
    assert len(cpu_actors) == 2  # processes=2
    assert {result["pid"] for result in results.values()} <= cpu_actors
    assert example.stop() == 0, example.log

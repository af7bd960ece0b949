"""Pausing a namespace from the command line holds across supervisors and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import delta_actors as delta
from tests.e2e.apps import Task
from tests.e2e.conftest import ROOT
from tests.e2e.test_supervise import ACTORS, runs, states
from tests.waiting import wait_until


def cli(dsn: str, *argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "delta_actors", *argv, "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pause_holds_across_two_supervisors_and_a_restart_until_resume(supervise, e2e_dsn):
    first = supervise()
    second = supervise()
    first.wait_started(ACTORS)
    second.wait_started(ACTORS)
    assert cli(e2e_dsn, "pause", "default").strip() == "paused namespace default"
    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"p{i}") for i in range(10)])
        time.sleep(2.0)  # two polls and the NOTIFY: nothing of `default` is claimed
        assert runs(e2e_dsn) == []
        # A supervisor started while paused does not claim either.
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        supervise().wait_started(ACTORS)
        time.sleep(1.5)
        assert runs(e2e_dsn) == []
        assert "since" in cli(e2e_dsn, "status").split("QUEUES")[1].split("\n\n")[0]
        assert cli(e2e_dsn, "resume", "default").strip() == "resumed namespace default"
        wait_until(lambda: states(e2e_dsn).get("synced") == 10, 20, "the works after resume")
    assert sorted(run[1] for run in runs(e2e_dsn)) == sorted(f"p{i}" for i in range(10))

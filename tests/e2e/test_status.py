"""End to end: `delta-actors status` and `inspect` against a running supervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import delta_actors as delta
from tests.e2e.apps import Task
from tests.e2e.conftest import ROOT
from tests.waiting import wait_until

ACTORS = 4  # workers: default x1, reports x2; plus the leader


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from delta_actors.ops.cli import main; main()", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "DELTA_DATABASE_URL": dsn},
    )  # fmt: skip


def status(dsn: str) -> dict[str, object]:
    result = cli(dsn, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_status_shows_the_running_supervisor(supervise, e2e_dsn):
    """The elected leader, every actor with a fresh heartbeat, and the work it did."""
    process = supervise()
    process.wait_started(ACTORS)
    wait_until(lambda: status(e2e_dsn)["leader"] is not None, 30, "a leader")
    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"t{i}") for i in range(20)])
    wait_until(
        lambda: status(e2e_dsn)["resources"]
        == [{"kind": "task", "state": "synced", "count": 20, "estimated": False}],
        30, "twenty synced tasks",
    )  # fmt: skip
    found = status(e2e_dsn)
    leader = found["leader"]
    assert isinstance(leader, dict)
    leader_pids = {pid for pid, _, role in process.actors() if role == "leader"}
    assert leader["pid"] in leader_pids and leader["expires_in"] > 0
    actors = found["actors"]
    assert isinstance(actors, list)
    assert sorted((a["namespace"], a["role"]) for a in actors) == [
        ("default", "worker"), ("leader", "leader"), ("reports", "worker"), ("reports", "worker"),
    ]  # fmt: skip
    assert all(a["heartbeat_age"] < 30 for a in actors)
    queues = {q["namespace"]: q for q in found["queues"]}  # type: ignore[union-attr]
    assert queues["default"]["finished_per_second"] > 0
    assert queues["default"]["available"] == 0

    table = cli(e2e_dsn, "status")
    assert table.returncode == 0, table.stderr
    assert f"pid {leader['pid']}" in table.stdout
    shown = cli(e2e_dsn, "inspect", "task", "t7")
    assert shown.returncode == 0, shown.stderr
    assert "state:      synced" in shown.stdout

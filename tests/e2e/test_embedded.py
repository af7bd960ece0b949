"""The embedded default database: `delta-actors db` and supervise without a DSN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DELTA_DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "delta_actors", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False,
    )  # fmt: skip


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder that the unprivileged server user can reach."""
    base = Path(tempfile.mkdtemp(prefix="delta-embedded-"))
    base.chmod(0o755)
    yield base / "postgres"
    cli("db", "stop", "--data-dir", str(base / "postgres"))
    shutil.rmtree(base, ignore_errors=True)


def test_db_start_status_stop(data_dir):
    """db start creates, starts and migrates; status reports it; stop stops it."""
    started = cli("db", "start", "--data-dir", str(data_dir))
    assert started.returncode == 0, started.stderr
    assert "dsn: postgresql://" in started.stdout
    status = cli("db", "status", "--data-dir", str(data_dir))
    assert status.returncode == 0
    assert status.stdout.startswith("running")
    again = cli("db", "start", "--data-dir", str(data_dir))  # reuses the running server
    assert again.returncode == 0
    # With no DSN, `delta-actors status` reads the running embedded database.
    cluster_status = cli("status", "--data-dir", str(data_dir))
    assert cluster_status.returncode == 0, cluster_status.stderr
    assert "leader: none elected yet" in cluster_status.stdout
    # And so does Client.connect(), as the CLI does, saying which it used.
    program = (
        "import logging, delta_actors as delta; logging.basicConfig(level=logging.INFO)\n"
        "with delta.Client.connect() as client: print(client.get_job(1))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DELTA_DATABASE_URL"}
    connected = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
        env={**env, "DELTA_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}, check=False,
    )  # fmt: skip
    assert connected.returncode == 0, connected.stderr
    assert connected.stdout.strip() == "None"
    assert f"using the embedded database in {data_dir}" in connected.stderr
    stopped = cli("db", "stop", "--data-dir", str(data_dir))
    assert stopped.returncode == 0
    status = cli("db", "status", "--data-dir", str(data_dir))
    assert status.returncode == 3
    assert status.stdout.startswith("stopped")
    # Stopped: status does not start it, and names the ways to give it a database.
    cluster_status = cli("status", "--data-dir", str(data_dir))
    assert cluster_status.returncode == 2
    # The hint keeps the option given, so that it can be pasted as it is.
    assert f"delta-actors db start --data-dir {data_dir}" in cluster_status.stderr


def test_migrate_and_status_on_a_missing_folder(tmp_path):
    """status on a folder without a database says how to create one."""
    status = cli("db", "status", "--data-dir", str(tmp_path / "none"))
    assert status.returncode == 3
    assert "delta-actors db start" in status.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_unreachable_data_folder_names_the_fix(tmp_path):
    """As root, a data folder the server user cannot enter fails with the fix named."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    result = cli("db", "start", "--data-dir", str(locked / "pg"))
    assert result.returncode != 0
    assert "choose a data folder it can reach" in result.stderr

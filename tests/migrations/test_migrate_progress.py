"""`delta-actors migrate` shows progress on a terminal and stays quiet anywhere else."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from delta_actors.db import migrations
from delta_actors.ops.progress import Progress

CLI = [sys.executable, "-c", "from delta_actors.ops.cli import main; main()"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_one_line_on_a_terminal_and_erases_it():
    """Each step rewrites the line in place; closing erases it."""
    stream = Terminal()
    with Progress(stream) as progress:
        progress.step(0, 2, "first")
        progress.step(1, 2, "second")
    assert stream.getvalue() == "\r\x1b[K[0/2] first\r\x1b[K[1/2] second\r\x1b[K"


def test_progress_writes_nothing_to_a_pipe_or_a_file():
    """Not a terminal: no output at all."""
    stream = io.StringIO()
    with Progress(stream) as progress:
        progress.step(0, 1, "first")
    assert stream.getvalue() == ""
    assert not progress.is_shown


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_cli_migrate_shows_progress_on_a_terminal_only(empty_dsn, dsn):
    """stderr a terminal: each migration is announced, then erased; a pipe: silence."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "migrate", "--dsn", empty_dsn],
            stdout=subprocess.PIPE, stderr=follower, text=True,
        )  # fmt: skip
        os.close(follower)
        terminal = _read_all(leader).decode()
        stdout, _ = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    assert proc.returncode == 0, terminal
    every = migrations.migrations()
    for done, migration in enumerate(every):
        name = f"{migration.version:04d}_{migration.name}"
        assert f"[{done}/{len(every)}] applying {name}" in terminal
    assert terminal.endswith("\r\x1b[K")
    assert "applied 0001_job_queue" in stdout  # the result itself goes to stdout

    piped = subprocess.run(
        [*CLI, "migrate", "--dsn", dsn], capture_output=True, text=True, check=False
    )
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert "nothing to do" in piped.stdout

"""What the benchmark scripts share: a migrated throwaway cluster, waiting for supervise, the
environment of a process that runs another checkout's package."""

from __future__ import annotations

import os
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


def with_package_of(checkout: str | os.PathLike[str]) -> dict[str, str]:
    """This process's environment with `checkout`'s delta_actors first on the path (for a
    script or `-c`; `-c` also puts its working directory first, so start it elsewhere or
    in `checkout`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), env.get("PYTHONPATH")]))
    return env


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


@contextmanager
def pgbouncer(dsn: str, mode: str, pool_size: int) -> Iterator[str]:
    """A PgBouncer (Debian's `pgbouncer`) in `mode` in front of `dsn`'s Unix-socket
    server; yields the DSN of the same database through it, and stops it at exit."""
    import os
    import pwd
    import shutil

    from delta_actors.local.cluster import short_socket_dir

    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        raise RuntimeError("pgbouncer not found (Debian: apt-get install pgbouncer)")
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = str(info.get("user") or "postgres")
    folder = short_socket_dir("pgb")
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    lines = [
        "[databases]", f"* = host={info['host']} port={info.get('port') or 5432}",
        "[pgbouncer]", "listen_addr =", f"unix_socket_dir = {folder}", "listen_port = 6432",
        "auth_type = trust", f"auth_file = {folder}/users.txt", f"pool_mode = {mode}",
        f"default_pool_size = {pool_size}", "max_client_conn = 2000",
        f"logfile = {folder}/pgbouncer.log",
    ]  # fmt: skip
    if os.geteuid() == 0:  # PgBouncer refuses root; run it as the cluster's server user
        lines.append("user = nobody")
    (folder / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (folder, *folder.iterdir()):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    proc = subprocess.Popen([binary, str(folder / "pgbouncer.ini")], stderr=subprocess.DEVNULL)
    through = psycopg.conninfo.make_conninfo(
        host=str(folder), port="6432", dbname=str(info.get("dbname") or "postgres"), user=user
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(through, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield through
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)

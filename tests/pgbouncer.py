"""PgBouncer in front of the test server, in transaction mode and in session mode.

Debian's `pgbouncer` package (`.ci/run` installs it when its binary is missing). Each
xdist worker starts, on first use, one PgBouncer per pool mode on a Unix socket of its
own, in front of its PostgreSQL server (the throwaway cluster or `$DELTA_TEST_DSN`),
with a wildcard database entry, so `bouncer.dsn(dsn)` reaches any test database through
it. Transaction mode gets few server connections (TRANSACTION_POOL_SIZE), so that clients
share them from the first statements on, as they do in production.

Without the binary, the tests that ask for a bouncer are skipped with that reason (the
`-ra` summary lists it) and the report header says so at the top of the run: never
silently.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest

from delta_actors.local.cluster import short_socket_dir
from delta_actors.testing.databases import DatabaseServer as Server

TRANSACTION_POOL_SIZE = 4  # server connections per database and user
SESSION_POOL_SIZE = 60
PORT = 6432
_SKIP = "pgbouncer not found on PATH or in /usr/sbin (Debian: apt-get install pgbouncer)"


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def pytest_report_header() -> str:
    found = pgbouncer_binary()
    if found is None:
        return f"pgbouncer: not found, its tests are skipped ({_SKIP})"
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    return f"pgbouncer: {found} ({out.stdout.splitlines()[0] if out.stdout else '?'})"


class Bouncer:
    """One PgBouncer process in `mode` (transaction or session) in front of the server."""

    def __init__(self, binary: str, server: Server, mode: str) -> None:
        self.mode = mode
        self.dir = short_socket_dir("pgb")
        server_info = psycopg.conninfo.conninfo_to_dict(server.admin_dsn)
        self.user = str(server_info.get("user") or "postgres")
        # PgBouncer refuses to run as root; as root it runs as the same user as the
        # throwaway cluster's server (cluster.py), which owns its files.
        run_as = os.environ.get("DELTA_PG_USER", "nobody") if os.geteuid() == 0 else None
        backend = {k: server_info[k] for k in ("host", "port") if server_info.get(k)}
        password = server_info.get("password")
        (self.dir / "users.txt").write_text(f'"{self.user}" "{password or ""}"\n')
        pool_size = TRANSACTION_POOL_SIZE if mode == "transaction" else SESSION_POOL_SIZE
        backend_line = " ".join(f"{k}={v}" for k, v in backend.items())
        settings = [
            "[databases]",
            f"* = {backend_line}",
            "[pgbouncer]",
            "listen_addr =",
            f"unix_socket_dir = {self.dir}",
            f"listen_port = {PORT}",
            "auth_type = trust",
            f"auth_file = {self.dir}/users.txt",
            f"pool_mode = {mode}",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 2000",
            "server_lifetime = 3600",
            f"logfile = {self.dir}/pgbouncer.log",
        ]
        if run_as is not None:
            settings.append(f"user = {run_as}")
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text("\n".join(settings) + "\n")
        if run_as is not None:
            uid, gid = pwd.getpwnam(run_as).pw_uid, pwd.getpwnam(run_as).pw_gid
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, uid, gid)
        self.proc = subprocess.Popen(
            [binary, str(self.ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_up(server)

    def _wait_up(self, server: Server) -> None:
        deadline = time.monotonic() + 15
        probe = self.dsn(server.admin_dsn)
        while True:
            try:
                with psycopg.connect(probe, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pgbouncer ({self.mode}) did not start:\n{self.log()}"
                    ) from exc
                time.sleep(0.05)
            else:
                return

    def dsn(self, db_dsn: str, **options: str) -> str:
        """The DSN of `db_dsn`'s database through this PgBouncer (same user)."""
        info = psycopg.conninfo.conninfo_to_dict(db_dsn)
        return psycopg.conninfo.make_conninfo(
            host=str(self.dir), port=str(PORT), dbname=str(info.get("dbname") or "postgres"),
            user=str(info.get("user") or self.user), **options,
        )  # fmt: skip

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def check_alive(self) -> None:
        """Fail, with the end of its log, if this PgBouncer has exited."""
        code = self.proc.poll()
        if code is not None:
            pytest.fail(f"pgbouncer ({self.mode}) exited with code {code}:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Bouncers:
    """This xdist worker's PgBouncers, started on first use."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._started: dict[str, Bouncer] = {}

    def get(self, mode: str) -> Bouncer:
        binary = pgbouncer_binary()
        if binary is None:
            pytest.skip(_SKIP)
        if mode not in self._started:
            self._started[mode] = Bouncer(binary, self._server, mode)
        return self._started[mode]

    def stop(self) -> None:
        for bouncer in self._started.values():
            bouncer.stop()


@pytest.fixture(scope="session")
def bouncers(pg_server: Server) -> Iterator[Bouncers]:
    started = Bouncers(pg_server)
    yield started
    started.stop()


@pytest.fixture
def transaction_bouncer(bouncers: Bouncers) -> Iterator[Bouncer]:
    """PgBouncer with pool_mode = transaction (skipped, saying why, without pgbouncer)."""
    bouncer = bouncers.get("transaction")
    bouncer.check_alive()
    yield bouncer
    bouncer.check_alive()


@pytest.fixture
def session_bouncer(bouncers: Bouncers) -> Iterator[Bouncer]:
    """PgBouncer with pool_mode = session (skipped, saying why, without pgbouncer)."""
    bouncer = bouncers.get("session")
    bouncer.check_alive()
    yield bouncer
    bouncer.check_alive()

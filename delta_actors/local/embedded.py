"""The embedded default database: a local PostgreSQL kept in a data folder of the user's.

`delta-actors supervise` with no DSN (and no $DELTA_DATABASE_URL) uses it: the cluster is
created on first use with durable settings, started if it is not running, given a
`delta` database, and migrated. It keeps running after the supervisor stops, so the next
run starts at once; `delta-actors db stop` stops it. The data folder defaults to
`.delta/postgres` under the current directory ($DELTA_DATA_DIR overrides); the socket
lives in a short folder under /tmp named after it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import psycopg
from psycopg import sql

from delta_actors.db import migrations
from delta_actors.db.connection import translate_errors
from delta_actors.errors import ClusterError
from delta_actors.local.cluster import PostgresCluster, server_uid

DATABASE = "delta"


def default_data_dir() -> Path:
    """Return $DELTA_DATA_DIR, else .delta/postgres under the current directory."""
    configured = os.environ.get("DELTA_DATA_DIR")
    return Path(configured) if configured else Path.cwd() / ".delta" / "postgres"


def embedded_cluster(data_dir: Path | None = None) -> PostgresCluster:
    """Return the embedded cluster of `data_dir` (not started)."""
    data_dir = (data_dir or default_data_dir()).resolve()
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:10]
    # A stable, short path (sockets must stay under 107 bytes) that every run finds again.
    socket_dir = Path(f"/tmp/delta-{digest}")  # noqa: S108 (ownership checked below)
    if socket_dir.exists() and socket_dir.stat().st_uid not in {os.geteuid(), server_uid()}:
        raise ClusterError(
            f"socket folder {socket_dir} belongs to another user: remove it, or set "
            "DELTA_DATA_DIR to another data folder"
        )
    return PostgresCluster(data_dir=data_dir, socket_dir=socket_dir, durable=True)


def _check_reachable(path: Path) -> None:
    """The server user must be able to traverse every folder above the data folder."""
    uid = server_uid()
    if uid == os.geteuid():
        return
    for folder in path.parents:
        mode = folder.stat().st_mode
        if folder.stat().st_uid != uid and not mode & 0o001:
            raise ClusterError(
                f"the PostgreSQL server runs as an unprivileged user that cannot enter "
                f"{folder} (mode {oct(mode & 0o777)}): choose a data folder it can reach "
                "with --data-dir or DELTA_DATA_DIR, or make that folder traversable"
            )


def ensure_running(data_dir: Path | None = None) -> tuple[PostgresCluster, str]:
    """Create, start and migrate the embedded database as needed; return it and its DSN."""
    cluster = embedded_cluster(data_dir)
    cluster.data_dir.parent.mkdir(parents=True, exist_ok=True)
    _check_reachable(cluster.data_dir)
    cluster.init()
    cluster.start()
    with (
        translate_errors("prepare embedded database", cluster.dsn()),
        psycopg.connect(cluster.dsn(), autocommit=True) as conn,
    ):
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    dsn = cluster.dsn(DATABASE)
    with (
        translate_errors("migrate embedded database", dsn),
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        migrations.migrate(conn)
    return cluster, dsn

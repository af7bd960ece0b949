"""The `delta-actors` command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from delta_actors.db.connection import DSN_ENV, connect, redact_dsn, resolve_dsn
from delta_actors.errors import DeltaError

DATA_DIR_HELP = "Embedded database folder (default: $DELTA_DATA_DIR or ./.delta/postgres)."


def _dsn_or_exit(dsn: str | None) -> str:
    resolved = resolve_dsn(dsn)
    if resolved is None:
        raise click.UsageError(f"no database given: pass --dsn URL or set {DSN_ENV}")
    return resolved


def _dsn_to_read(dsn: str | None, data_dir: Path | None) -> str:
    """The DSN given, else $DELTA_DATABASE_URL, else the embedded database if it runs."""
    resolved = resolve_dsn(dsn)
    if resolved is not None:
        return resolved
    from delta_actors.local.embedded import DATABASE, embedded_cluster

    try:
        cluster = embedded_cluster(data_dir)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if cluster.is_initialized() and cluster.is_running():
        return cluster.dsn(DATABASE)
    raise click.UsageError(
        f"no database given: pass --dsn URL, set {DSN_ENV}, or start the embedded "
        f"database in {cluster.data_dir} (`delta-actors db start`)"
    )


@contextmanager
def _exit_codes(not_found: type[Exception] | tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Exit 1 with its message on `not_found`, 2 on any other DeltaError."""
    try:
        yield
    except not_found as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _echo_json(value: object) -> None:
    import msgspec

    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


@click.group()
@click.version_option(package_name="delta-actors")
def main() -> None:
    """Keep resources in PostgreSQL in sync with external systems."""


@main.command()
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}).")
def migrate(dsn: str | None) -> None:
    """Apply the delta_actors schema migrations (idempotent, safe to run concurrently)."""
    from delta_actors.db import migrations
    from delta_actors.ops.progress import Progress

    resolved = _dsn_or_exit(dsn)

    def applying(done: int, total: int, migration: migrations.Migration) -> None:
        progress.step(done, total, f"applying {migration.version:04d}_{migration.name}")

    try:
        with (
            Progress() as progress,
            connect(resolved, autocommit=True, action="migrate") as conn,
        ):
            progress.step(0, 0, "waiting for the migration lock")
            applied = migrations.migrate(conn, on_applying=applying)
            version = migrations.current_version(conn)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    where = redact_dsn(resolved)
    if not applied:
        click.echo(f"schema is up to date at version {version} ({where})")
        return
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"schema is at version {version} ({where})")


@main.command()
@click.option("--app", "app_path", required=True, help="The delta.App to run, as module:attr.")
@click.option(
    "--dsn",
    help=f"PostgreSQL URL (default: ${DSN_ENV}; without either, the embedded database).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option(
    "--shutdown-timeout", type=float, default=30.0, show_default=True,
    help="Seconds running works get to finish on SIGTERM.",
)  # fmt: skip
@click.option(
    "--heartbeat-interval", type=float, default=2.0, show_default=True,
    help="Seconds between actor heartbeats.",
)  # fmt: skip
@click.option(
    "--hang-timeout", type=float, default=5.0, show_default=True,
    help="Seconds without a heartbeat before an actor is killed and restarted "
    "(at most the rescue TTL minus two heartbeat intervals minus one second).",
)  # fmt: skip
@click.option(
    "--rescue-ttl", type=float, default=10.0, show_default=True,
    help="Seconds without a database heartbeat before an actor's work is rescued.",
)  # fmt: skip
@click.option(
    "--lease-ttl", type=float, default=15.0, show_default=True,
    help="Seconds a leader's lease lasts; failover after a crash takes at most this.",
)  # fmt: skip
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port (0 picks a free one; the log says which).",
)  # fmt: skip
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True,
    help="Address the metrics server binds to (0.0.0.0: every interface).",
)  # fmt: skip
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
    show_default=True,
)  # fmt: skip
def supervise(  # noqa: PLR0917 (click passes every option)
    app_path: str,
    dsn: str | None,
    data_dir: Path | None,
    shutdown_timeout: float,
    heartbeat_interval: float,
    hang_timeout: float,
    rescue_ttl: float,
    lease_ttl: float,
    metrics_port: int | None,
    metrics_host: str,
    log_format: str,
    log_level: str,
) -> None:
    """Run an app: one actor process per namespace (times its processes), plus a leader."""
    from delta_actors.app import load_app
    from delta_actors.ops.logs import configure_logging
    from delta_actors.runtime.supervisor import Supervisor

    configure_logging(log_level, log_format)
    try:
        app = load_app(app_path)
        resolved = resolve_dsn(dsn)
        if resolved is None:
            from delta_actors.local.embedded import ensure_running

            cluster, resolved = ensure_running(data_dir)
            click.echo(
                f"using the embedded database in {cluster.data_dir} ({resolved}); "
                "`delta-actors db stop` stops it",
                err=True,
            )
        supervisor = Supervisor(
            app,
            resolved,
            shutdown_timeout=shutdown_timeout,
            heartbeat_interval=heartbeat_interval,
            hang_timeout=hang_timeout,
            rescue_ttl=rescue_ttl,
            lease_ttl=lease_ttl,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        code = supervisor.run()
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.group()
def db() -> None:
    """The embedded database that `supervise` uses when no DSN is given."""


@db.command("status")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
def db_status(data_dir: Path | None) -> None:
    """Say where the embedded database is and whether it runs."""
    from delta_actors.local.embedded import DATABASE, embedded_cluster

    cluster = embedded_cluster(data_dir)
    if not cluster.is_initialized():
        click.echo(f"no embedded database in {cluster.data_dir} (`delta-actors db start`)")
        sys.exit(3)
    state = "running" if cluster.is_running() else "stopped"
    click.echo(f"{state}: {cluster.data_dir}\ndsn: {cluster.dsn(DATABASE)}")
    if state == "stopped":
        sys.exit(3)


@db.command("start")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
def db_start(data_dir: Path | None) -> None:
    """Create (if needed), start and migrate the embedded database; print its DSN."""
    from delta_actors.local.embedded import ensure_running

    try:
        cluster, dsn = ensure_running(data_dir)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"running: {cluster.data_dir}\ndsn: {dsn}")


@db.command("stop")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
def db_stop(data_dir: Path | None) -> None:
    """Stop the embedded database (its data stays)."""
    from delta_actors.local.embedded import embedded_cluster

    cluster = embedded_cluster(data_dir)
    if not cluster.is_running():
        click.echo(f"not running: {cluster.data_dir}")
        return
    cluster.stop()
    click.echo(f"stopped: {cluster.data_dir}")


@main.command()
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database).")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
def status(dsn: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Show the leader, live actors, resources by state, queues and recent failures."""
    from delta_actors.ops.status import read_status
    from delta_actors.ops.tables import render_status

    resolved = _dsn_to_read(dsn, data_dir)
    with _exit_codes(), connect(resolved, autocommit=True, action="read status") as conn:
        found = read_status(conn)
    if as_json:
        _echo_json(found)
    else:
        click.echo(render_status(found))


@main.command()
@click.argument("kind")
@click.option("--full", is_flag=True, help="List everything, not the changes after the cursor.")
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database).")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
def inform(kind: str, full: bool, dsn: str | None, data_dir: Path | None) -> None:
    """Run KIND's informer now, on whichever leader holds the lease.

    Exits 1 when no informer of that kind is known to the database, 2 when it cannot be
    reached. `delta-actors status` shows the run under INFORMERS.
    """
    from delta_actors.client import Client
    from delta_actors.errors import UnknownKindError

    resolved = _dsn_to_read(dsn, data_dir)
    with _exit_codes(not_found=UnknownKindError), Client.connect(resolved, max_size=1) as client:
        client.run_informer(kind, full=full)
    listing = "a full listing" if full else "the changes after its cursor"
    click.echo(f"asked the leader to run the {kind} informer now ({listing})")


@main.command()
@click.argument("kind")
@click.argument("object_id", metavar="ID")
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database).")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")
def inspect(
    kind: str, object_id: str, dsn: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Show one resource: its object, state, generation, attempts, errors and live works.

    Exits 1 when there is no such resource, 2 when the database cannot be read.
    """
    from delta_actors.ops.status import NotFoundError, inspect_resource
    from delta_actors.ops.tables import render_resource

    resolved = _dsn_to_read(dsn, data_dir)
    with (
        _exit_codes(not_found=NotFoundError),
        connect(resolved, autocommit=True, action="inspect") as conn,
    ):
        detail = inspect_resource(conn, kind, object_id)
    if as_json:
        _echo_json(detail)
    else:
        click.echo(render_resource(detail))

"""The `delta-actors` command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from delta_actors.db.connection import (
    DSN_ENV,
    connect,
    redact_dsn,
    resolve_dsn,
    translate_errors,
)
from delta_actors.errors import DeltaError

DATA_DIR_HELP = "Embedded database folder (default: $DELTA_DATA_DIR or ./.delta/postgres)."


def _with_data_dir(command: str, data_dir: Path | None) -> str:
    """`command`, keeping the --data-dir the user gave, so that a hint can be pasted."""
    import shlex

    return f"{command} --data-dir {shlex.quote(str(data_dir))}" if data_dir else command


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
        f"database in {cluster.data_dir} (`{_with_data_dir('delta-actors db start', data_dir)}`)"
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
@click.option(
    "--check", is_flag=True,
    help="Only read the schema's version: exit 0 if it is current, 1 naming the fix if "
    "not (needs only SELECT on delta_migration).",
)  # fmt: skip
def migrate(dsn: str | None, check: bool) -> None:
    """Apply the delta_actors schema migrations (idempotent, safe to run concurrently)."""
    from delta_actors.db import migrations
    from delta_actors.ops.progress import Progress

    resolved = _dsn_or_exit(dsn)
    if check:
        _check_schema_version(resolved)
        return

    def applying(done: int, total: int, migration: migrations.Migration) -> None:
        progress.step(done, total, f"applying {migration.version:04d}_{migration.name}")

    try:
        with (
            Progress() as progress,
            connect(resolved, autocommit=True, action="migrate") as conn,
        ):
            progress.step(0, 0, "waiting for the migration lock")
            with translate_errors("migrate", resolved):
                applied = migrations.migrate(conn, on_applying=applying)
                version = migrations.current_version(conn)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    where = redact_dsn(resolved)
    if not applied:
        click.echo(f"schema is at version {version}, nothing to do ({where})")
        return
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"schema is at version {version} ({where})")


def _check_schema_version(dsn: str) -> None:
    """`migrate --check`: read the version, change nothing, say whether it is current."""
    from delta_actors.db import migrations

    try:
        with (
            connect(dsn, autocommit=True, action="check the schema") as conn,
            translate_errors("check the schema", dsn),
        ):
            version = migrations.current_version(conn)
    except DeltaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    problem = migrations.schema_problem(version)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    click.echo(f"schema is at version {version}, nothing to do ({redact_dsn(dsn)})")


@main.command()
@click.option("--app", "app_path", required=True, help="The delta.App to run, as module:attr.")
@click.option(
    "--dsn",
    help=f"PostgreSQL URL (default: ${DSN_ENV}; without either, the embedded database).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option(
    "--pool-mode", type=click.Choice(["session", "transaction"]),
    help="How a pooler between us and PostgreSQL pools (default: the DSN's "
    "delta_pool_mode, else session: direct, or a pooler in session mode). transaction: "
    "behind PgBouncer's pool_mode = transaction; nothing prepared, no session settings, "
    "wake-ups by polling unless --listen-dsn is given.",
)  # fmt: skip
@click.option(
    "--listen-dsn",
    help="A direct PostgreSQL URL for LISTEN wake-ups when --dsn goes through a pooler in "
    "transaction mode (default: poll).",
)  # fmt: skip
@click.option(
    "--poll-interval", type=click.FloatRange(min=0.01),
    help="Seconds between a worker's claims without a wake-up (default: 1, or 0.2 when "
    "nothing listens).",
)  # fmt: skip
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
    pool_mode: str | None,
    listen_dsn: str | None,
    poll_interval: float | None,
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
    from delta_actors.db.pooler import with_pool_mode
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
                f"`{_with_data_dir('delta-actors db stop', data_dir)}` stops it",
                err=True,
            )
        if pool_mode is not None:
            resolved = with_pool_mode(resolved, pool_mode)
        supervisor = Supervisor(
            app,
            resolved,
            listen_dsn=listen_dsn,
            poll_interval=poll_interval,
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
        start = _with_data_dir("delta-actors db start", data_dir)
        click.echo(f"no embedded database in {cluster.data_dir} (`{start}`)")
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


# ---------------------------------------------------------------- the operator's hands


def _database_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(
        command
    )
    command = click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)(
        command
    )
    return click.option(
        "--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database)."
    )(command)


def _common_filters(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--kind", help="Only this kind."),
            click.option("--state", help="Only this state (running: whose work runs)."),
            click.option("--error", help="Only those whose newest error contains this text."),
            click.option("--namespace", help="Only this namespace."),
        ]
    ):
        command = option(command)
    return command


def _resource_filters(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--id", "ids", multiple=True, help="Only this object id (repeatable; with --kind)."
    )(command)
    command = click.option(
        "--tag", "tags", multiple=True, help="Only those with this tag (repeatable: all)."
    )(command)
    return _common_filters(command)


def _job_filters(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--id", "ids", type=int, multiple=True, help="Only this job id (repeatable)."
    )(command)
    return _common_filters(command)


def _page_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--limit", type=int, default=100, show_default=True,
                           help="Rows per page.")(command)  # fmt: skip
    return click.option("--after", help="The cursor a previous page printed.")(command)


def _change_options(command: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--dry-run", is_flag=True, help="Print the count and the first matches; change nothing."
    )(command)


@main.group()
def resources() -> None:
    """List resources by filter, and retry, invalidate or delete them in bulk."""


def _resource_filter(
    *,
    kind: str | None, state: str | None, tags: tuple[str, ...], error: str | None,
    namespace: str | None, ids: tuple[str, ...], changes: bool,
) -> Any:  # fmt: skip
    from delta_actors.bulk import resource_filter

    if ids and kind is None:
        raise click.UsageError("--id needs --kind: an object id is unique within its kind")
    if changes and not (kind or state or tags or error or namespace or ids):
        raise click.UsageError(
            "no filter given: pass at least one of --kind --state --tag --error "
            "--namespace --id (to act on every resource, --kind for each kind)"
        )
    with _exit_codes():
        return resource_filter(
            kind, state=state, tags=tags, error=error, namespace=namespace, ids=ids or None
        )


@resources.command("list")
@_resource_filters
@_page_options
@_database_options
def resources_list(
    *,
    kind: str | None, state: str | None, error: str | None, namespace: str | None,
    tags: tuple[str, ...], ids: tuple[str, ...], after: str | None, limit: int,
    dsn: str | None, data_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """One page of resources that match, in kind and object id order."""
    from delta_actors.ops.operate import list_resources
    from delta_actors.ops.tables import render_listing

    where = _resource_filter(
        kind=kind,
        state=state,
        tags=tags,
        error=error,
        namespace=namespace,
        ids=ids,
        changes=False,
    )
    resolved = _dsn_to_read(dsn, data_dir)
    with _exit_codes(), connect(resolved, autocommit=True, action="list resources") as conn:
        listing = list_resources(conn, where, after, limit)
    if as_json:
        _echo_json(listing)
    else:
        click.echo(render_listing(listing))


def _resource_command(action: str, doc: str) -> None:
    @resources.command(action, help=doc)
    @_resource_filters
    @_change_options
    @_database_options
    def command(
        *,
        kind: str | None, state: str | None, error: str | None, namespace: str | None,
        tags: tuple[str, ...], ids: tuple[str, ...], dry_run: bool,
        dsn: str | None, data_dir: Path | None, as_json: bool,
    ) -> None:  # fmt: skip
        from delta_actors.ops.operate import on_resources
        from delta_actors.ops.tables import render_done

        where = _resource_filter(
            kind=kind,
            state=state,
            tags=tags,
            error=error,
            namespace=namespace,
            ids=ids,
            changes=True,
        )
        resolved = _dsn_to_read(dsn, data_dir)
        with _exit_codes(), connect(resolved, autocommit=True, action=action) as conn:
            done = on_resources(conn, action, where, dry_run=dry_run)
        if as_json:
            _echo_json(done)
        else:
            click.echo(render_done(done, "resources"))


_resource_command(
    "retry",
    "Work the matching resources again: attempts reset, errors kept (deleted ones skipped;\n"
    "one being deleted runs its finalize again).",
)
_resource_command(
    "invalidate",
    "Work the matching resources again with their stored objects (as retry).",
)
_resource_command(
    "delete",
    "Delete the matching resources: deleting until their controller's finalize returns\n"
    "(at once without one). A newer inform revives one.",
)


@main.group()
def jobs() -> None:
    """List plain jobs by filter, and retry or cancel them in bulk."""


def _job_filter(
    *,
    kind: str | None, state: str | None, error: str | None, namespace: str | None,
    ids: tuple[int, ...], changes: bool,
) -> Any:  # fmt: skip
    from delta_actors.bulk import job_filter

    if changes and not (kind or state or error or namespace or ids):
        raise click.UsageError(
            "no filter given: pass at least one of --kind --state --error --namespace --id"
        )
    with _exit_codes():
        return job_filter(kind, state=state, error=error, namespace=namespace, ids=ids or None)


@jobs.command("list")
@_job_filters
@_page_options
@_database_options
def jobs_list(
    *,
    kind: str | None, state: str | None, error: str | None, namespace: str | None,
    ids: tuple[int, ...], after: str | None, limit: int,
    dsn: str | None, data_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """One page of plain jobs that match, in id order."""
    from delta_actors.ops.operate import list_jobs
    from delta_actors.ops.tables import render_listing

    where = _job_filter(
        kind=kind, state=state, error=error, namespace=namespace, ids=ids, changes=False
    )
    resolved = _dsn_to_read(dsn, data_dir)
    with _exit_codes(), connect(resolved, autocommit=True, action="list jobs") as conn:
        listing = list_jobs(conn, where, after, limit)
    if as_json:
        _echo_json(listing)
    else:
        click.echo(render_listing(listing))


def _job_command(action: str, doc: str) -> None:
    @jobs.command(action, help=doc)
    @_job_filters
    @_change_options
    @_database_options
    def command(
        *,
        kind: str | None, state: str | None, error: str | None, namespace: str | None,
        ids: tuple[int, ...], dry_run: bool,
        dsn: str | None, data_dir: Path | None, as_json: bool,
    ) -> None:  # fmt: skip
        from delta_actors.ops.operate import on_jobs
        from delta_actors.ops.tables import render_done

        where = _job_filter(
            kind=kind, state=state, error=error, namespace=namespace, ids=ids, changes=True
        )
        resolved = _dsn_to_read(dsn, data_dir)
        with _exit_codes(), connect(resolved, autocommit=True, action=action) as conn:
            done = on_jobs(conn, action, where, dry_run=dry_run)
        if as_json:
            _echo_json(done)
        else:
            click.echo(render_done(done, "jobs"))


_job_command(
    "retry",
    "Put the matching jobs that neither run nor wait back to available now (one more\n"
    "attempt allowed if they used theirs up).",
)
_job_command(
    "cancel",
    "Cancel the matching jobs that still wait; running ones are asked to stop (their\n"
    "worker cancels the run within a second or two, a plain def's thread left to finish).",
)


def _pause_command(name: str, doc: str, *, resume: bool) -> None:
    @main.command(name, help=doc)
    @click.argument("namespace")
    @click.option(
        "--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database)."
    )
    @click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
    def command(namespace: str, dsn: str | None, data_dir: Path | None) -> None:
        from delta_actors.ops.operate import pause

        resolved = _dsn_to_read(dsn, data_dir)
        with _exit_codes(), connect(resolved, autocommit=True, action=name) as conn:
            pause(conn, namespace, resume=resume)
        click.echo(f"{name}d namespace {namespace}" if resume else f"paused namespace {namespace}")


_pause_command(
    "pause",
    "Stop claims of NAMESPACE on every host until `resume` (running works finish; informs\n"
    "and enqueues are still accepted).",
    resume=False,
)
_pause_command("resume", "Let claims of a paused NAMESPACE go on.", resume=True)


@main.command()
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}, else the embedded database).")
@click.option("--data-dir", type=click.Path(path_type=Path), help=DATA_DIR_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--read-only", is_flag=True, help="Hide every action and refuse each one.")
@click.option(
    "--token", envvar="DELTA_WEB_TOKEN", show_envvar=True,
    help="Token every request must carry (required to listen beyond 127.0.0.1).",
)  # fmt: skip
@click.option("--no-access-log", is_flag=True, help="Do not log every request.")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def web(  # noqa: PLR0917 (click passes every option)
    dsn: str | None,
    data_dir: Path | None,
    host: str,
    port: int,
    read_only: bool,
    token: str | None,
    no_access_log: bool,
    log_format: str,
) -> None:
    """Serve the web console: every resource, actions on a filter, live updates.

    Needs the web extra: pip install 'delta-actors[web]'.
    """
    from delta_actors.ops.logs import configure_logging

    try:
        from delta_actors.web.server import serve
    except ImportError as exc:
        click.echo(
            f"error: the console needs the web extra ({exc.name} is missing): "
            "pip install 'delta-actors[web]'",
            err=True,
        )
        sys.exit(2)
    configure_logging("info", log_format)
    with _exit_codes():
        serve(
            _dsn_to_read(dsn, data_dir), host=host, port=port, read_only=read_only,
            token=token or None, access_log=not no_access_log,
        )  # fmt: skip

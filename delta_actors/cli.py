"""The `delta-actors` command."""

from __future__ import annotations

import sys

import click

from delta_actors.database import DSN_ENV, connect, redact_dsn, resolve_dsn
from delta_actors.errors import DeltaError


def _dsn_or_exit(dsn: str | None) -> str:
    resolved = resolve_dsn(dsn)
    if resolved is None:
        raise click.UsageError(f"no database given: pass --dsn URL or set {DSN_ENV}")
    return resolved


@click.group()
@click.version_option(package_name="delta-actors")
def main() -> None:
    """Keep resources in PostgreSQL in sync with external systems."""


@main.command()
@click.option("--dsn", help=f"PostgreSQL URL (default: ${DSN_ENV}).")
def migrate(dsn: str | None) -> None:
    """Apply the delta_actors schema migrations (idempotent, safe to run concurrently)."""
    from delta_actors import schema

    resolved = _dsn_or_exit(dsn)
    try:
        with connect(resolved, autocommit=True, action="migrate") as conn:
            applied = schema.migrate(conn)
            version = schema.current_version(conn)
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

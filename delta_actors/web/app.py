"""`create_app`: the console as an ASGI app, its pages and the URLs they answer.

URLs are part of the interface (bookmarks, links in alerts):

    /                                   overview
    /resources?kind=&state=&tag=&error=&namespace=&after=
    /resources/{kind}/{id}              one resource (the id may hold slashes)
    /jobs?kind=&state=&after=           plain jobs, and the periodic ones
    /informers
    /live?kind=&id=                     server-sent events that tell pages to refresh
    POST /actions/...                   every action (web/actions.py)

A page reads through web/reads.py on a connection from `Console.connection`, which
translates every psycopg error (db/connection.translate_errors). A bad filter value, or
one PostgreSQL cannot store (a NUL byte), gets a 400 page naming the fix; a database
error (a connection PostgreSQL ended, a privilege missing) a 503 page with its redacted
message, logged without a traceback; the console goes on serving, and the pool replaces
broken connections for the next request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from delta_actors import bulk
from delta_actors.errors import ConfigError, DeltaError, EncodeError
from delta_actors.model.job_row import JobState
from delta_actors.model.resource import State
from delta_actors.web import actions, live, reads
from delta_actors.web.console import Console, query
from delta_actors.web.security import Guard
from delta_actors.web.views import filter_fields, opened, render, resource_filter

logger = logging.getLogger(__name__)
PAGE = 50  # rows per page of a listing


def create_app(dsn: str, *, read_only: bool = False, token: str | None = None) -> Starlette:
    """The console as an ASGI app, to serve or to mount in a Starlette/FastAPI service.

    Args:
        dsn: the PostgreSQL URL of the delta_actors database (its password never shows).
        read_only: hide every action, and refuse each with 403.
        token: when given, every request must carry it (see web/security.py); the
            command refuses to listen beyond loopback without one.
    """
    console = Console(dsn, read_only=read_only)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await console.open()
        try:
            yield
        finally:
            await console.close()

    static = StaticFiles(packages=[("delta_actors.web", "static")])
    app = Starlette(
        routes=[
            Route("/", overview),
            Route("/resources", resources),
            Route("/resources/{kind}/{object_id:path}", resource),
            Route("/jobs", jobs),
            Route("/informers", informers),
            Route("/live", live.stream),
            *actions.routes(),
            Mount("/static", app=static, name="static"),
        ],
        exception_handlers={DeltaError: _error_page},
        lifespan=lifespan,
    )
    app.state.console = console
    app.add_middleware(Guard, token=token)
    return app


async def overview(request: Request) -> Response:
    console = await opened(request)
    async with console.connection("read the overview") as conn:
        data = await reads.read_overview(conn, console.chart)
    return render(request, "overview.html", overview=data, live_query="")


async def resources(request: Request) -> Response:
    console = await opened(request)
    where = resource_filter(request.query_params)
    after = request.query_params.get("after") or None
    troubled = where.state is None or where.state.value in reads.TROUBLED
    async with console.connection("list resources") as conn:
        page = await reads.list_resources(conn, where, after, PAGE)
        groups = await reads.read_error_groups(conn, where) if troubled else None
    return render(
        request, "resources.html", page=page, groups=groups, fields=filter_fields(where),
        states=[s.value for s in State], after=after, newest_error=reads.newest_error,
        live_query=_live_query(kind=where.kind),
    )  # fmt: skip


async def resource(request: Request) -> Response:
    console = await opened(request)
    kind, object_id = request.path_params["kind"], request.path_params["object_id"]
    bulk.resource_filter(kind)  # a malformed kind gets its 400 page
    async with console.connection(f"read {kind} {object_id!r}") as conn:
        found = await reads.read_resource(conn, kind, object_id)
    if found is None:
        return render(
            request, "error.html", status=404, title="not found",
            message=f"no {kind} resource with id {object_id!r}",
        )  # fmt: skip
    return render(
        request, "resource.html", page=found, live_query=_live_query(kind=kind, id=object_id)
    )


async def jobs(request: Request) -> Response:
    console = await opened(request)
    params = request.query_params
    where = bulk.job_filter(
        params.get("kind") or None, state=params.get("state") or None,
        error=params.get("error") or None, namespace=params.get("namespace") or None,
    )  # fmt: skip
    after = params.get("after") or None
    async with console.connection("list jobs") as conn:
        page = await reads.list_jobs(conn, where, after, PAGE)
        periodic = await reads.read_periodic(conn)
    fields = {
        "kind": where.kind, "state": where.state.value if where.state else None,
        "error": where.error, "namespace": where.namespace,
    }  # fmt: skip
    return render(
        request, "jobs.html", page=page, periodic=periodic, fields=fields, after=after,
        states=[s.value for s in JobState], newest_error=reads.newest_error,
        live_query="",
    )  # fmt: skip


async def informers(request: Request) -> Response:
    console = await opened(request)
    async with console.connection("read the informers") as conn:
        rows = await reads.read_informers(conn)
    return render(request, "informers.html", informers=rows, live_query="")


def _live_query(**params: Any) -> str:
    return query(**params)


async def _error_page(request: Request, exc: Exception) -> Response:
    # A value of the request's own is the caller's to fix; anything else is the database's.
    status = 400 if isinstance(exc, ConfigError | EncodeError) else 503
    if status == 503:
        logger.warning(
            "console request %s %s failed: %s", request.method, request.url.path, exc,
            extra={"event": "web.request_failed"},
        )  # fmt: skip
    return render(
        request, "error.html", status=status,
        title="bad request" if status == 400 else "database error", message=str(exc),
    )  # fmt: skip

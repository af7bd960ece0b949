"""What every page and action shares: the console of a request, rendering, the filter
of the /resources URL and of its actions' forms."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from delta_actors import bulk
from delta_actors.web.console import Console


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def opened(request: Request) -> Console:
    """The console, opened: a console mounted in another app has no lifespan of its own."""
    console = console_of(request)
    await console.open()
    return console


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """Render `template` with what every page has: the console, its root URL, the CSRF token."""
    console = console_of(request)
    context.setdefault("live_query", None)  # None: a page without live updates
    html = console.templates.get_template(template).render(
        console=console, root=request.scope.get("root_path", ""),
        csrf=request.scope["state"]["csrf"], path=request.url.path,
        done=request.query_params.get("done", ""), **context,
    )  # fmt: skip
    return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


def resource_filter(params: Any) -> bulk.ResourceFilter:
    """The filter of a query string or form: kind, state, tag and id (repeatable), error,
    namespace; a bad value raises ConfigError naming the valid ones."""
    return bulk.resource_filter(
        params.get("kind") or None, state=params.get("state") or None,
        tags=[t for t in params.getlist("tag") if t] or None,
        error=params.get("error") or None, namespace=params.get("namespace") or None,
        ids=[i for i in params.getlist("id") if i] or None,
    )  # fmt: skip


def filter_fields(where: bulk.ResourceFilter) -> dict[str, Any]:
    """`where` as query-string fields (the names of the /resources URL)."""
    return {
        "kind": where.kind, "state": where.state.value if where.state else None,
        "tag": list(where.tags), "error": where.error, "namespace": where.namespace,
        "id": list(where.ids or ()),
    }  # fmt: skip

"""`POST /actions/...`: every change the console makes, through the operator's functions.

    /actions/retry, /actions/invalidate, /actions/delete   resources by the /resources filter
                                                            (kind, state, tag, error,
                                                            namespace, id)
    /actions/retry-jobs, /actions/cancel-jobs               plain jobs (kind, state, error,
                                                            namespace, id)
    /actions/pause, /actions/resume                         a namespace (namespace)
    /actions/run-informer                                   a kind's informer (kind, full)

An action on a filter first answers with a confirmation page that says how many rows it
will touch; only a POST with `confirm=yes` runs it (in batches, delta_actors.bulk), then
redirects (303) to where its rows can be watched, saying what it did. The Guard has
checked the CSRF token before any of this runs; a read-only console refuses every
action with 403. Resources are deleted as `delta-actors resources delete` does, without
an app: marked `deleting`, and a worker whose controller has no `finalize` deletes them.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from delta_actors import bulk
from delta_actors.db.connection import drive_async
from delta_actors.errors import ConfigError
from delta_actors.web import reads
from delta_actors.web.console import query
from delta_actors.web.views import console_of, filter_fields, opened, render, resource_filter

logger = logging.getLogger(__name__)
RESOURCE_ACTIONS = {"retry": "retried", "invalidate": "invalidated", "delete": "deleted"}
JOB_ACTIONS = {"retry-jobs": "retried", "cancel-jobs": "cancelled"}


def routes() -> list[Route]:
    return [
        *(Route(f"/actions/{name}", on_resources, methods=["POST"]) for name in RESOURCE_ACTIONS),
        *(Route(f"/actions/{name}", on_jobs, methods=["POST"]) for name in JOB_ACTIONS),
        Route("/actions/pause", on_namespace, methods=["POST"]),
        Route("/actions/resume", on_namespace, methods=["POST"]),
        Route("/actions/run-informer", on_informer, methods=["POST"]),
    ]


def form_of(request: Request) -> ImmutableMultiDict[str, str]:
    """The form the Guard read (and checked) before the request came here."""
    return ImmutableMultiDict(request.scope["state"].get("form", []))


async def on_resources(request: Request) -> Response:
    refused = _refuse_if_read_only(request)
    if refused is not None:
        return refused
    console = await opened(request)
    action = request.url.path.rsplit("/", 1)[1]
    form = form_of(request)
    where = resource_filter(form)
    if action == "delete" and where.is_whole_kind:
        raise ConfigError(
            "delete with no filter would delete every resource"
            + (f" of kind {where.kind!r}" if where.kind else "")
            + ": choose a state, tag, error, namespace or id first"
        )
    fields = filter_fields(where)
    async with console.connection(f"{action} resources") as conn:
        if form.get("confirm") != "yes":
            count = await reads.count_matches(conn, where)
            return render(
                request, "confirm.html", action=action, count=count, fields=fields,
                what="resources", live_query=None,
            )  # fmt: skip
        if action == "delete":
            done = await drive_async(conn, bulk.delete_resources(where, True))
        else:
            done = await drive_async(conn, bulk.retry_resources(where))
    _log(action, done, fields)
    # Back to the rows acted on, whatever state they reach: the state filter is dropped.
    back = {**fields, "state": None, "done": f"{RESOURCE_ACTIONS[action]} {done:,}"}
    if where.ids is not None and len(where.ids) == 1 and where.kind:
        return _redirect(request, f"/resources/{where.kind}/{where.ids[0]}", done=back["done"])
    return _redirect(request, "/resources", **back)


async def on_jobs(request: Request) -> Response:
    refused = _refuse_if_read_only(request)
    if refused is not None:
        return refused
    console = await opened(request)
    action = request.url.path.rsplit("/", 1)[1]
    form = form_of(request)
    ids = [int(i) for i in form.getlist("id") if i.isdigit()] or None
    where = bulk.job_filter(
        form.get("kind") or None, state=form.get("state") or None,
        error=form.get("error") or None, namespace=form.get("namespace") or None, ids=ids,
    )  # fmt: skip
    fields = {
        "kind": where.kind, "state": where.state.value if where.state else None,
        "error": where.error, "namespace": where.namespace, "id": list(where.ids or ()),
    }  # fmt: skip
    if form.get("confirm") != "yes":
        async with console.connection(f"count the jobs to {action.removesuffix('-jobs')}") as conn:
            count = await reads.count_job_matches(conn, where)
        return render(
            request, "confirm.html", action=action, count=count, fields=fields, what="jobs",
            live_query=None,
        )  # fmt: skip
    run = console.client.retry_jobs if action == "retry-jobs" else console.client.cancel_jobs
    done = await run(
        where.kind, state=where.state, error=where.error, namespace=where.namespace, ids=ids
    )
    _log(action, done, fields)
    return _redirect(
        request, "/jobs", kind=where.kind, namespace=where.namespace,
        done=f"{JOB_ACTIONS[action]} {done:,}",
    )  # fmt: skip


async def on_namespace(request: Request) -> Response:
    refused = _refuse_if_read_only(request)
    if refused is not None:
        return refused
    console = await opened(request)
    namespace = form_of(request).get("namespace") or ""
    if request.url.path.endswith("/pause"):
        await console.client.pause(namespace)
        done = f"paused {namespace}"
    else:
        await console.client.resume(namespace)
        done = f"resumed {namespace}"
    _log(done.split()[0], 1, {"namespace": namespace})
    return _redirect(request, "/", done=done)


async def on_informer(request: Request) -> Response:
    refused = _refuse_if_read_only(request)
    if refused is not None:
        return refused
    console = await opened(request)
    form = form_of(request)
    kind = form.get("kind") or ""
    full = form.get("full") == "yes"
    await console.client.run_informer(kind, full=full)
    _log("run-informer", 1, {"kind": kind, "full": full})
    return _redirect(
        request, "/informers", done=f"asked for a {'full ' if full else ''}run of {kind}"
    )


def _refuse_if_read_only(request: Request) -> Response | None:
    if not console_of(request).read_only:
        return None
    return Response(
        "this console is read-only (started with --read-only): it takes no actions",
        status_code=403,
        media_type="text/plain",
    )


def _redirect(request: Request, path: str, **params: Any) -> Response:
    root = request.scope.get("root_path", "")
    return RedirectResponse(root + path + query(**params), status_code=303)


def _log(action: str, count: int, fields: dict[str, Any]) -> None:
    shown = {k: v for k, v in fields.items() if v not in (None, "", [])}
    logger.info(
        "console: %s %d (%s)", action, count, shown,
        extra={"event": "web.action", "action": action, "count": count},
    )  # fmt: skip

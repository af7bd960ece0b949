"""The terminal form of `status`, `inspect` and the bulk commands: aligned tables, ages a
person reads at once."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from delta_actors.db.status_sql import QUEUE_COUNT_CAP
from delta_actors.model.resource import State
from delta_actors.ops.operate import Done, JobLine, Listing, ResourceLine
from delta_actors.ops.status import ActorStatus, ResourceDetail, Status

ERROR_WIDTH = 100  # characters of an error shown in a table; JSON has it whole


def format_age(seconds: float) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h07m`, `3d04h`."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_time(at: datetime | None) -> str:
    """A timestamp in UTC to the second, or `-`."""
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Align `rows` under `headers`; numbers to the right, text to the left."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            c.rjust(w) if is_number else c.ljust(w)
            for c, w, is_number in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _shorten(text: str, width: int = ERROR_WIDTH) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def render_status(status: Status) -> str:
    """The whole status as text sections."""
    return "\n\n".join(
        (
            f"schema version {status.schema_version}",
            _leader(status),
            "ACTORS\n" + _actors(status),
            "RESOURCES\n" + _resources(status),
            "QUEUES (finished/s: over the last minute)\n" + _queues(status),
            "INFORMERS\n" + _informers(status),
            "PERIODIC JOBS\n" + _periodic(status),
            "RECENT FAILURES\n" + _failures(status),
        )
    )


def _actors(status: Status) -> str:
    if not status.actors:
        return "none running"
    rows = [
        (a.namespace, a.role, a.host, a.pid, a.id, format_age(a.heartbeat_age),
         format_time(a.started_at), _health(a))
        for a in status.actors
    ]  # fmt: skip
    return table(
        ("NAMESPACE", "ROLE", "HOST", "PID", "ACTOR", "HEARTBEAT", "STARTED", "HEALTH"), rows
    )


def _health(actor: ActorStatus) -> str:
    """`ok`, or what is stuck or failing: `informers stalled 42s: <error>`."""
    notes = []
    stalled = {h.name for h in actor.stalled}
    for h in actor.health:
        if h.name in stalled:
            note = f"{h.name} stalled {format_age(h.since_progress + actor.heartbeat_age)}"
        elif h.failures:
            note = f"{h.name} failing ({h.failures}x)"
        else:
            continue
        if h.last_error:
            note += f": {_shorten(h.last_error, 60)}"
        notes.append(note)
    return "; ".join(notes) or "ok"


def _queues(status: Status) -> str:
    if not status.queues:
        return "no jobs"
    rows = [
        (q.namespace, f"~{q.available}" if q.available_estimated else q.available,
         q.running, f"~{q.waiting}" if q.waiting_estimated else q.waiting, format_age(q.lag),
         f">={round(q.finished_per_second, 1)}" if q.finished_capped
         else round(q.finished_per_second, 1),
         "-" if q.paused_at is None else f"since {format_time(q.paused_at)}")
        for q in status.queues
    ]  # fmt: skip
    headers = ("NAMESPACE", "AVAILABLE", "RUNNING", "WAITING", "LAG", "FINISHED/S", "PAUSED")
    rendered = table(headers, rows)
    if any(q.available_estimated or q.waiting_estimated for q in status.queues):
        rendered += (
            f"\n~: estimated from the planner's statistics (counted up to {QUEUE_COUNT_CAP:,})"
        )
    return rendered


def _periodic(status: Status) -> str:
    if not status.periodic:
        return "none"
    rows = [
        (p.name, p.kind, p.namespace, p.schedule, format_time(p.last_run_at),
         format_time(p.next_run_at), p.runs)
        for p in status.periodic
    ]  # fmt: skip
    return table(("NAME", "KIND", "NAMESPACE", "SCHEDULE", "LAST RUN", "NEXT RUN", "RUNS"), rows)


def _informers(status: Status) -> str:
    if not status.informers:
        return "none"
    rows = [
        (i.kind, format_time(i.last_run_at), format_time(i.last_success_at),
         _shorten(i.last_error, 60) or "-", format_time(i.cursor),
         "requested" if i.requested else
         ("due" if i.next_in <= 0 else "in " + format_age(i.next_in)), i.runs, i.failures)
        for i in status.informers
    ]  # fmt: skip
    headers = ("KIND", "LAST RUN", "LAST SUCCESS", "LAST ERROR", "CURSOR", "NEXT", "OK", "FAILED")
    return table(headers, rows)


def _failures(status: Status) -> str:
    if not status.failures:
        return "none"
    rows = [
        (format_time(f.at), f.what, f.kind, f.id, f.namespace, f.state, f.attempt,
         _shorten(f.error))
        for f in status.failures
    ]  # fmt: skip
    headers = ("AT", "WHAT", "KIND", "ID", "NAMESPACE", "STATE", "ATTEMPT", "LAST ERROR")
    return table(headers, rows)


def _leader(status: Status) -> str:
    leader = status.leader
    if leader is None:
        return "leader: none elected yet"
    who = f"{leader.host} pid {leader.pid} (actor {leader.actor_id}), term {leader.term}"
    since = format_time(leader.since)
    if leader.expires_in < 0:
        expired = format_age(-leader.expires_in)
        return f"leader: none; the last, {who}, let its lease expire {expired} ago"
    return f"leader: {who}, since {since}, lease valid for {format_age(leader.expires_in)}"


def _resources(status: Status) -> str:
    if not status.resources:
        return "none stored"
    states = [s.value for s in State]
    by_kind: dict[str, dict[str, int]] = {}
    estimated: set[tuple[str, str]] = set()
    for count in status.resources:
        by_kind.setdefault(count.kind, {})[count.state] = count.count
        if count.estimated:
            estimated.add((count.kind, count.state))

    def cell(kind: str, state: str, n: int) -> int | str:
        return f"~{n}" if (kind, state) in estimated else n

    rows = [
        (kind, *(cell(kind, s, counts.get(s, 0)) for s in states),
         cell(kind, next((s for s in states if (kind, s) in estimated), ""),
              sum(counts.values())))
        for kind, counts in sorted(by_kind.items())
    ]  # fmt: skip
    rendered = table(("KIND", *(s.upper() for s in states), "TOTAL"), rows)
    if estimated:
        rendered += "\n~: estimated from the planner's statistics (a large table)"
    return rendered


def render_resource(detail: ResourceDetail) -> str:
    """One resource: its fields, its object, its errors and its live works."""
    fields = [
        ("resource", f"{detail.kind} {detail.object_id!r} (id {detail.id})"),
        ("namespace", detail.namespace),
        ("state", detail.state),
        ("generation", str(detail.generation)),
        ("attempts", f"{detail.attempt} failed of {detail.max_attempts} (this generation)"),
        ("created", format_time(detail.created_at)),
        ("updated", format_time(detail.updated_at)),
        ("attempted", format_time(detail.attempted_at)),
        ("synced", format_time(detail.synced_at)),
        ("tags", ", ".join(detail.tags) or "-"),
        ("metadata", msgspec.json.encode(detail.metadata).decode()),
    ]
    if detail.deletion_requested_at is not None:
        fields.insert(9, ("deletion asked", format_time(detail.deletion_requested_at)))
    width = max(len(name) for name, _ in fields) + 1
    lines = [f"{name + ':':<{width}} {value}" for name, value in fields]
    lines += ["", "object:", _indent(msgspec.json.format(bytes(detail.object), indent=2).decode())]
    lines += ["", f"errors ({len(detail.errors)}, newest last):"]
    for error in detail.errors:
        at = format_time(datetime.fromtimestamp(error.at, UTC))
        lines.append(f"  {at}  attempt {error.attempt}: {_shorten(error.error, 200)}")
    if not detail.errors:
        lines.append("  none")
    lines += ["", "works (queued or running):"]
    if detail.works:
        rows = [
            (w.id, w.state, w.attempt, w.claimed_by or "-", format_time(w.scheduled_at),
             format_time(w.attempted_at))
            for w in detail.works
        ]  # fmt: skip
        headers = ("JOB", "STATE", "ATTEMPT", "CLAIMED BY", "DUE", "ATTEMPTED")
        lines.append(_indent(table(headers, rows)))
    else:
        lines.append("  none")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def render_listing(listing: Listing) -> str:
    """A page of resources or jobs, and how to ask for the next one."""
    if not listing.items:
        return "no matches"
    first = listing.items[0]
    rows: list[tuple[object, ...]]
    if isinstance(first, ResourceLine):
        rows = [
            (r.kind, r.id, r.namespace, r.state, r.attempt, format_time(r.updated_at),
             _shorten(r.error or "-", 60))
            for r in listing.items if isinstance(r, ResourceLine)
        ]  # fmt: skip
        text = table(("KIND", "ID", "NAMESPACE", "STATE", "ATTEMPT", "UPDATED", "ERROR"), rows)
    else:
        rows = [
            (j.id, j.kind, j.namespace, j.state, j.attempt, format_time(j.scheduled_at),
             _shorten(j.error or "-", 60))
            for j in listing.items if isinstance(j, JobLine)
        ]  # fmt: skip
        text = table(("ID", "KIND", "NAMESPACE", "STATE", "ATTEMPT", "SCHEDULED", "ERROR"), rows)
    if listing.next is not None:
        text += f"\n\nmore: add --after {shlex.quote(listing.next)}"
    return text


def render_done(done: Done, what: str) -> str:
    """What an operation did, or with --dry-run what it would do and to which rows."""
    if not done.dry_run:
        if done.count == 0:
            return f"no such {what}: nothing to {done.action}"
        return f"{done.action}: {done.count} {what}"
    text = f"would {done.action} {done.count} {what} (dry run: nothing changed)"
    if done.first:
        more = ", ..." if done.count > len(done.first) else ""
        text += "\nfirst: " + ", ".join(done.first) + more
    return text

"""Rescue: the claims of a dead actor go back to work, counted as a failed attempt.

An actor is dead when its supervisor reaped its process, when its heartbeat is older than
the TTL (killed host, SIGSTOP, lost network), or when it has no `delta_actor` row while
holding claims. Rescue deletes the actor's row, then finishes each of its claims through
the same fenced statements the actor itself would have used, as that actor: a plain job
becomes retryable (or discarded after its last attempt); a resource work fails its
attempt and queues a follow-up. A result the actor wrote meanwhile wins: the fence
matches nothing and the claim is left as written. Actors the supervisor killed itself
(a forced stop) have their claims handed back instead, no attempt counted. An actor
that resumes after being rescued finds its row gone and stops.
"""

from __future__ import annotations

from collections.abc import Generator

from delta_actors.db import actor_sql, job_sql, resource_sql
from delta_actors.db.actor_sql import ClaimOfActor
from delta_actors.db.connection import Rows, Statement
from delta_actors.queue import results
from delta_actors.queue.completer import job_params, work_params
from delta_actors.queue.runner import error_entry

RESCUE_BATCH = 1000


def rescue_actors(
    actor_ids: list[int], reason: str, *, counted: bool = True
) -> Generator[Statement, Rows, int]:
    """Rescue every claim of `actor_ids`; return how many claims went back to work.

    `counted=False` hands them back instead, no attempt counted: for actors we killed
    ourselves (a forced stop), whose works did nothing wrong.
    """
    if not actor_ids:
        return 0
    yield actor_sql.DELETE_ACTORS, (actor_ids,)
    rescued = 0
    for actor_id in actor_ids:
        while True:
            rows = yield actor_sql.SELECT_CLAIMS_OF_ACTOR, (actor_id, RESCUE_BATCH)
            if not rows:
                break
            claims = [ClaimOfActor(*row) for row in rows]
            if not counted:
                rescued += yield from _hand_back(actor_id, claims)
                if len(claims) < RESCUE_BATCH:
                    break
                continue
            message = f"rescued: actor {actor_id} {reason}"
            jobs = [
                results.job_failed(c.job_id, c.attempt, c.max_attempts, 0.0, _error(c, message))
                for c in claims
                if c.resource_id is None
            ]
            works = [
                results.work_failed(
                    c.job_id,
                    c.attempt,
                    c.generation or 0,
                    0.0,
                    _error(c, message),
                    deleting=bool(c.deleting),
                )
                for c in claims
                if c.resource_id is not None
            ]
            if jobs:
                rescued += len((yield job_sql.COMPLETE_JOBS, job_params(jobs, actor_id)))
            if works:
                rescued += len((yield resource_sql.COMPLETE_WORKS, work_params(works, actor_id)))
            if len(claims) < RESCUE_BATCH:
                break
    return rescued


def _hand_back(actor_id: int, claims: list[ClaimOfActor]) -> Generator[Statement, Rows, int]:
    jobs = [c for c in claims if c.resource_id is None]
    works = [
        results.work_handed_back(c.job_id, c.attempt, c.generation or 0)
        for c in claims
        if c.resource_id is not None
    ]
    returned = 0
    if jobs:
        params = {
            "ids": [c.job_id for c in jobs], "attempts": [c.attempt for c in jobs],
            "actor": actor_id,
        }  # fmt: skip
        returned += len((yield job_sql.HAND_BACK_JOBS, params))
    if works:
        returned += len((yield resource_sql.COMPLETE_WORKS, work_params(works, actor_id)))
    return returned


def _error(claim: ClaimOfActor, message: str) -> str:
    return error_entry(claim.attempt, None, message)


def find_dead_actors(ttl: float, orphans: bool = True) -> Generator[Statement, Rows, list[int]]:
    """Return actors whose heartbeat is older than `ttl` seconds, and with `orphans` those
    that hold claims but have no row."""
    rows = yield actor_sql.SELECT_EXPIRED_ACTORS, {"ttl": ttl, "limit": 100}
    dead = [int(row[0]) for row in rows]
    if orphans:
        rows = yield actor_sql.SELECT_ORPHANED_CLAIMERS, {"limit": 100}
        dead += [int(row[0]) for row in rows if row[0] is not None and row[0] not in dead]
    return dead

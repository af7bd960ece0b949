"""Rescue: the claims of a dead actor go back to work, counted as a failed attempt.

An actor is dead when its supervisor reaped its process, when its heartbeat is older than
the TTL (killed host, SIGSTOP, lost network), or when it has no `delta_actor` row while
holding claims. Rescue deletes the actors' rows, then finishes their claims through
the statements the actors themselves would have used, fenced on each claim being still
one of theirs (at its attempt), all the dead actors at once: a plain job
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
from delta_actors.queue.completer import fence_params, job_params, work_params
from delta_actors.queue.runner import error_entry

RESCUE_BATCH = 1000


def rescue_actors(
    actor_ids: list[int], reason: str, *, counted: bool = True
) -> Generator[Statement, Rows, int]:
    """Rescue every claim of `actor_ids`; return how many claims went back to work.

    `counted=False` hands them back instead, no attempt counted: for actors we killed
    ourselves (a forced stop), whose works did nothing wrong. The statements take every
    actor at once (the *_OF_ACTORS statements, fenced on the claim being still one of
    theirs), so a rescue costs as many round trips for fifty dead actors as for one:
    four, and three more per further `RESCUE_BATCH` claims.
    """
    if not actor_ids:
        return 0
    yield actor_sql.DELETE_ACTORS, (actor_ids,)
    rescued = 0
    while True:
        rows = yield actor_sql.SELECT_CLAIMS_OF_ACTORS, (actor_ids, RESCUE_BATCH)
        if not rows:
            break
        claims = [ClaimOfActor(*row) for row in rows]
        if counted:
            rescued += yield from _fail(actor_ids, claims, reason)
        else:
            rescued += yield from _hand_back(actor_ids, claims)
        if len(claims) < RESCUE_BATCH:
            break
    return rescued


def _fail(
    actor_ids: list[int], claims: list[ClaimOfActor], reason: str
) -> Generator[Statement, Rows, int]:
    jobs = [
        results.job_failed(c.job_id, c.attempt, c.max_attempts, 0.0, _error(c, reason))
        for c in claims
        if c.resource_id is None
    ]
    works = [
        results.work_failed(
            c.job_id,
            c.attempt,
            c.generation or 0,
            0.0,
            _error(c, reason),
            deleting=bool(c.deleting),
        )
        for c in claims
        if c.resource_id is not None
    ]
    failed = 0
    if jobs:
        failed += len((yield job_sql.COMPLETE_JOBS_OF_ACTORS, job_params(jobs, actor_ids)))
    if works:
        failed += len((yield resource_sql.COMPLETE_WORKS_OF_ACTORS, work_params(works, actor_ids)))
    return failed


def _hand_back(actor_ids: list[int], claims: list[ClaimOfActor]) -> Generator[Statement, Rows, int]:
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
            **fence_params(actor_ids),
        }  # fmt: skip
        returned += len((yield job_sql.HAND_BACK_JOBS_OF_ACTORS, params))
    if works:
        returned += len(
            (yield resource_sql.COMPLETE_WORKS_OF_ACTORS, work_params(works, actor_ids))
        )
    return returned


def _error(claim: ClaimOfActor, reason: str) -> str:
    return error_entry(claim.attempt, None, f"rescued: actor {claim.actor} {reason}")


def find_dead_actors(ttl: float, orphans: bool = True) -> Generator[Statement, Rows, list[int]]:
    """Return actors whose heartbeat is older than `ttl` seconds, and with `orphans` those
    that hold claims but have no row."""
    rows = yield actor_sql.SELECT_EXPIRED_ACTORS, {"ttl": ttl, "limit": 100}
    dead = [int(row[0]) for row in rows]
    if orphans:
        rows = yield actor_sql.SELECT_ORPHANED_CLAIMERS, {"limit": 100}
        dead += [int(row[0]) for row in rows if row[0] is not None and row[0] not in dead]
    return dead

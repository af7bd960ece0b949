"""Running one resource work: the controller's `work` (or `finalize`) and its outcome.

Outcomes (invariant 5 of docs/architecture.md; the rules live in queue/results.py) and
what COMPLETE_WORKS makes of them, when the resource's generation is still the one the
work saw:

    return                      -> synced
    raise Requeue(after=d)      -> scheduled, a new work after d s, no failure counted
    raise Delete(reason)        -> deleted; with a `finalize`, deleting (finalize runs next)
    raise PermanentError(...)   -> degraded
    raise Cancel(...)           -> a failure like any other, its message naming the fix
                                   (Cancel is for plain jobs)
    any other exception/timeout -> failed, attempt + 1, a new work after the retry delay;
                                   degraded once attempt reaches max_attempts
    no controller for the kind  -> left as it is, offered again later (reported)
    stop deadline               -> left as it is, a new work at once (not counted)

A resource marked for deletion (`deletion_requested_at`) runs `finalize` instead, with the
same outcomes but for these: return (or Delete) -> deleted; a requeue or failure keeps it
deleting; a controller without `finalize` -> deleted, no code run.

The work's job row always finishes; follow-ups are new queued works, folded into any
that an inform queued meanwhile. A newer generation keeps its own state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from delta_actors.app import ControllerRegistration
from delta_actors.health import describe
from delta_actors.middleware import Call
from delta_actors.model.resource import Resource
from delta_actors.outcomes import Cancel, Delete, PermanentError, Requeue
from delta_actors.queue import results
from delta_actors.queue.results import WorkResult
from delta_actors.queue.runner import (
    Claim,
    ClaimRunner,
    HandlerTimeout,
    error_entry,
    trace_context,
    unknown_kind_message,
)

logger = logging.getLogger(__name__)


class Reconciler(ClaimRunner):
    """Runs resource works and maps their outcomes to WorkResults."""

    async def run(self, claim: Claim) -> WorkResult:
        """Run one claimed resource work and return what to write."""
        row = claim.resource
        if row is None:
            # The resource row is gone (cleaned up): nothing to reconcile.
            self._stats.cancelled += 1
            return results.work_of_vanished_resource(claim.id, claim.attempt)
        generation, attempt = row.generation, row.attempt
        deleting = row.deletion_requested_at is not None
        registration = self._app.controllers.get(claim.kind)
        if registration is None:
            self._stats.unknown_kind += 1
            message = unknown_kind_message("kind", claim.kind, self._app.controllers)
            logger.error(
                message, extra={"event": "work.unknown_kind", "resource_id": claim.resource_id}
            )
            return results.work_of_unknown_kind(
                claim.id, claim.attempt, generation, error_entry(attempt, None, message)
            )
        if deleting and not registration.finalizes:
            self._stats.deleted += 1
            return results.work_deleted(claim.id, claim.attempt, generation)
        try:
            obj = registration.decoder.decode(row.object)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            message = (
                f"stored object of {claim.kind} {row.object_id!r} no longer decodes into "
                f"{registration.object_type.__qualname__}: {exc}"
            )
            return self._failed(claim, generation, attempt, exc, message, deleting=deleting)
        return await self._run(claim, registration, row.resource(obj), deleting)

    async def _run(
        self,
        claim: Claim,
        registration: ControllerRegistration,
        resource: Resource[Any],
        deleting: bool,
    ) -> WorkResult:
        """Run `work` (or `finalize`, when `deleting`) and map its outcome."""
        generation, attempt = resource.generation, resource.attempt
        controller = registration.controller
        chain = self._app.chain(claim.traced)
        call = (
            Call("finalize" if deleting else "work", claim.kind, resource.namespace,
                 attempt + 1, resource=resource, job_id=claim.id,
                 trace_context=trace_context(claim.metadata))
            if chain else None
        )  # fmt: skip
        try:
            await self._invoker.invoke(
                claim, controller.finalize if deleting else controller.work, resource,
                is_async=registration.finalize_is_async if deleting else registration.is_async,
                timeout=registration.timeout, call=call, chain=chain,
            )  # fmt: skip
        except Requeue as outcome:
            self._stats.snoozed += 1
            return results.work_requeued(
                claim.id, claim.attempt, generation, outcome.after, deleting=deleting
            )
        except Delete as outcome:
            self._stats.deleted += 1
            reason = f"deleted: {outcome.reason}" if outcome.reason else None
            error = error_entry(attempt, None, reason) if reason else None
            if registration.finalizes and not deleting:
                return results.work_deleting(claim.id, claim.attempt, generation, error)
            return results.work_deleted(claim.id, claim.attempt, generation, error)
        except Cancel as exc:
            # Cancel stops a plain job; a resource is not a job to cancel. A mistake in
            # the controller, so an ordinary failure (retried, then degraded), and said.
            message = (
                f"delta.Cancel({exc.reason!r}) raised from a controller's "
                f"{'finalize' if deleting else 'work'}: Cancel is for plain jobs; raise "
                "delta.PermanentError to degrade the resource, or delta.Delete to delete it"
            )
            logger.error(
                "%s %s: %s", claim.kind, resource.object_id, message,
                extra={"event": "work.cancel_misused", "resource_id": claim.resource_id},
            )  # fmt: skip
            return self._failed(claim, generation, attempt, exc, message, deleting=deleting)
        except PermanentError as exc:
            self._stats.discarded += 1
            message = f"permanent error: {exc}"
            logger.warning(
                "%s %s degraded: %s", claim.kind, resource.object_id, message,
                extra={"event": "work.degraded", "resource_id": claim.resource_id},
            )  # fmt: skip
            return results.work_degraded(
                claim.id, claim.attempt, generation, error_entry(attempt + 1, exc, message)
            )
        except HandlerTimeout as exc:
            return self._failed(claim, generation, attempt, exc, str(exc), deleting=deleting)
        except (asyncio.CancelledError, GeneratorExit):
            raise  # GeneratorExit: see Worker._run_job
        except BaseException as exc:  # noqa: BLE001 (a controller's SystemExit is a failure)
            return self._failed(claim, generation, attempt, exc, deleting=deleting)
        if deleting:
            self._stats.deleted += 1
            return results.work_deleted(claim.id, claim.attempt, generation)
        self._stats.completed += 1
        return results.work_synced(claim.id, claim.attempt, generation)

    def _failed(
        self,
        claim: Claim,
        generation: int,
        attempt: int,
        exc: BaseException,
        message: str | None = None,
        *,
        deleting: bool = False,
    ) -> WorkResult:
        self._stats.failed += 1
        delay = self._retry_policy(attempt + 1)
        row = claim.resource
        object_id = row.object_id if row is not None else "?"
        what = "finalize" if deleting else "work"
        extra = {"resource_id": claim.resource_id, "kind": claim.kind, "object_id": object_id}
        if row is not None and attempt + 1 >= row.max_attempts:
            # COMPLETE_WORKS degrades it: worth a line of its own, louder than a retry.
            logger.warning(
                "%s %s degraded: its %s failed %d times (max_attempts), last: %s",
                claim.kind, object_id, what, attempt + 1, message or describe(exc),
                extra={"event": "work.degraded", **extra},
            )  # fmt: skip
        else:
            logger.info(
                "%s %s: %s failed (attempt %d), retrying in %.1fs: %s",
                claim.kind, object_id, what, attempt + 1, delay, message or describe(exc),
                extra={"event": "work.failed", **extra},
            )  # fmt: skip
        return results.work_failed(
            claim.id, claim.attempt, generation, delay, error_entry(attempt + 1, exc, message),
            deleting=deleting,
        )  # fmt: skip

    def escaped(self, claim: Claim, exc: BaseException) -> WorkResult:
        """The result for a work that `exc` ended outside run() (see Worker._run_job)."""
        row = claim.resource
        assert row is not None  # run() returns before user code for a vanished row
        deleting = row.deletion_requested_at is not None
        return self._failed(claim, row.generation, row.attempt, exc, deleting=deleting)

    @staticmethod
    def hand_back(claim: Claim) -> WorkResult:
        """The result for a claimed work that did not run to its end (see results.py)."""
        generation = claim.resource.generation if claim.resource is not None else 0
        return results.work_handed_back(claim.id, claim.attempt, generation)

"""`delta.Periodic`: a plain job the leader enqueues on a schedule, durable across restarts.

    delta.Periodic(SendReport(day="today"), every=3600.0)
    delta.Periodic(Cleanup(), cron="*/15 * * * *", namespace="ops", timezone="Europe/Berlin")

The schedule's state lives in PostgreSQL (`delta_periodic`: the next run and the last),
so no restart skips or doubles a run. The protocol (leader/periodic.py):

- A periodic is known by its `name` (default: kind, schedule and a hash of the job's
  arguments, so two of one job type with other arguments are two periodics). The first
  leader that sees it stores its first run: at once for `every=`, the next match for
  `cron=`.
- Each second the leader enqueues every periodic whose next run is due, and moves the
  next run on past now, in one transaction fenced on its term. The job's unique key
  names the period, so even a stale leader racing a new one cannot enqueue a period
  twice while its job lives.
- A missed period (the cluster was down) runs once when the cluster comes back, not once
  per missed period: the next run after it is the next one after now. `every=` keeps
  its phase (runs stay `every` seconds apart from the first); `cron=` follows the
  expression in `timezone` (UTC by default).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from delta_actors.errors import ConfigError
from delta_actors.model.job import Job
from delta_actors.model.kinds import kind_of
from delta_actors.model.names import validate_name

_encoder = msgspec.json.Encoder(order="deterministic")


class Periodic:
    """A plain job enqueued by the leader every `every` seconds or on a `cron` expression.

    Args:
        job: the job to enqueue (its type must be registered in the App's `jobs`).
        every: seconds between runs; or
        cron: a cron expression ("*/15 * * * *"), read by the croniter library (the
            `cron` extra: `pip install 'delta-actors[cron]'`).
        namespace: where the job runs; default: the job type's, else "default".
        timezone: an IANA zone name for `cron` ("Europe/Berlin"); default UTC.
        name: what the schedule's state is stored under; default from the kind, the
            schedule and the job's arguments. Set it to keep the state across a change
            of arguments or schedule.
    """

    __slots__ = ("_cron", "_zone", "args", "cron", "every", "job", "kind", "name", "namespace",
                 "timezone")  # fmt: skip

    def __init__(
        self,
        job: Job,
        *,
        every: float | None = None,
        cron: str | None = None,
        namespace: str | None = None,
        timezone: str | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(job, Job):
            raise ConfigError(f"Periodic takes a delta.Job instance, got {job!r:.100}")
        if (every is None) == (cron is None):
            raise ConfigError("Periodic takes one schedule: every=SECONDS or cron='EXPR'")
        if every is not None and not (
            isinstance(every, int | float) and math.isfinite(every) and every > 0
        ):
            raise ConfigError(f"Periodic every= must be > 0 seconds, got {every!r}")
        if timezone is not None and cron is None:
            raise ConfigError("Periodic timezone= applies to cron=; every= counts seconds")
        self.job = job
        self.kind = kind_of(type(job))
        self.every = float(every) if every is not None else None
        self.cron = cron
        self.timezone = timezone
        # None: the job type's, else "default" (the App fills it in when registering).
        self.namespace: str | None = namespace or type(job).default_namespace
        if self.namespace is not None:
            validate_name(self.namespace, "namespace of a Periodic")
        self.args = _encoder.encode(job)
        self._zone: Any = UTC
        self._cron: Any = None
        if cron is not None:
            self._cron, self._zone = _parse_cron(cron, timezone)
        schedule = f"every {self.every:g}s" if self.every is not None else f"cron {cron}"
        if timezone:
            schedule += f" {timezone}"
        digest = hashlib.blake2b(self.args + schedule.encode(), digest_size=4).hexdigest()
        self.name = name or f"{self.kind}:{digest}"
        if not (isinstance(self.name, str) and 1 <= len(self.name) <= 200):
            raise ConfigError(f"Periodic name= must be 1..200 characters, got {self.name!r}")

    @property
    def schedule(self) -> str:
        """The schedule as people read it: `every 3600s`, `cron */15 * * * * (UTC)`."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron} ({self.timezone or 'UTC'})"

    def first_run(self, now: datetime) -> datetime:
        """When a periodic seen for the first time runs: now for `every`, else the next match."""
        return now if self.every is not None else self._next_match(now)

    def next_run(self, due: datetime, now: datetime) -> datetime:
        """The run after the one due at `due`: the first after `now` (missed ones fold)."""
        if self.every is not None:
            step = timedelta(seconds=self.every)
            behind = max(0.0, (now - due).total_seconds())
            return due + step * (math.floor(behind / self.every) + 1)
        return self._next_match(now)

    def _next_match(self, after: datetime) -> datetime:
        local = after.astimezone(self._zone)
        nxt = self._cron.get_next(datetime, start_time=local)
        return nxt.astimezone(UTC)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"Periodic({self.kind}, {self.schedule})"


def _parse_cron(expression: str, timezone: str | None) -> tuple[Any, Any]:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError(
            "Periodic cron= needs the croniter library: pip install 'delta-actors[cron]'"
        ) from None
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigError(
            f"Periodic cron={expression!r} is not a cron expression, e.g. '*/15 * * * *' "
            "(minute hour day-of-month month day-of-week)"
        )
    zone: Any = UTC
    if timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"Periodic timezone={timezone!r} is not a known IANA zone, e.g. 'Europe/Berlin'"
            ) from None
    return croniter(expression, datetime.now(UTC).astimezone(zone)), zone

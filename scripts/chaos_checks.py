"""The checks of the fault-injection harness: faults, run records, and what they must show.

Pure functions over what the harness recorded (Fault) and what PostgreSQL holds (Run
records, job rows, receipts), plus HarnessChecks, the part of the Harness that reads
them and builds the report. The invariants checked, and why each exception is one, are
in scripts/chaos.py's docstring and docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chaos_app import HEARTBEAT, LEASE_TTL, RESCUE_BOUND, RESCUE_INTERVAL, RESCUE_TTL, makes_effects
from chaos_hosts import SESSION_END_BOUND

if TYPE_CHECKING:
    from chaos_liveness import Liveness

# The effects check: per parent resource its completed works (each a committed success),
# every receipt resource and every echo job (the effects of one work run each).
COMPLETED_WORKS_BY_PARENT = """
SELECT r.kind, r.object_id, count(j.id) FILTER (WHERE j.state = 'completed')
FROM delta_resource AS r LEFT JOIN delta_job AS j ON j.resource_id = r.id
WHERE r.kind <> 'receipt' GROUP BY r.id, r.kind, r.object_id
"""
RECEIPTS = """
SELECT o ->> 'parent', o ->> 'run', state::text
FROM (SELECT convert_from(object, 'UTF8')::jsonb AS o, state FROM delta_resource
      WHERE kind = 'receipt') AS receipt
"""
ECHO_JOBS = """
SELECT a ->> 'parent', a ->> 'run'
FROM (SELECT convert_from(args, 'UTF8')::jsonb AS a FROM delta_job
      WHERE kind = 'chaos-echo' AND resource_id IS NULL) AS echo
"""

# Connection kills, one fault kind per component: the application_names its connections
# carry (delta_actors.db.connection.component_conninfo); {namespace} is drawn per burst.
# The completer's are the worker's pool and its own connection for plain jobs' results.
KILL_CONNS = {
    "kill_conns_leader_pool": ("delta-leader",),
    "kill_conns_lease": ("delta-lease",),
    "kill_conns_claim": ("delta-claim-{namespace}",),
    "kill_conns_completer": ("delta-worker-{namespace}", "delta-results-{namespace}"),
    "kill_conns_listener": ("delta-listen-{namespace}",),
}
# Bursts on the leader's own connections may stop its duties while they last; the
# duties must be back within the bound after a burst ends.
LEADER_CONNS = ("kill_conns_leader_pool", "kill_conns_lease")


@dataclass
class Fault:
    kind: str
    at: float  # time.time()
    detail: str
    claims: list[int] = field(default_factory=list)  # job ids the victim held
    victims: list[int] = field(default_factory=list)  # actor ids
    rescued_after: float | None = None
    downtime: float = 0.0  # seconds PostgreSQL was down (restarts)
    pids: set[int] = field(default_factory=set)  # the processes it stopped or orphaned
    until: float = 0.0  # a pause: when SIGCONT is due; a burst: when it ends
    stops_leader: bool = False  # the leader's process or its database was the victim
    killed: int = 0  # a burst: backends terminated
    retried: bool = False  # a burst: looked at once ended (run_faults), again if it killed none
    host: int | None = None  # a network fault: the host it cut off or slowed

    @property
    def end(self) -> float:
        """When the fault itself was over (not its consequences)."""
        return max(self.at + self.downtime, self.until)


class HarnessChecks:
    """The Harness's end-of-run checks (mixed into Harness, whose state they read)."""

    def check(self, settled_in: float, liveness: Liveness) -> dict[str, Any]:
        violations: list[str] = []
        if settled_in < 0:
            violations.append(f"did not settle within {self.args.settle_timeout:g}s")
        resources = {
            (r[0], r[1]): (r[2], r[3])
            for r in self.query(
                "SELECT kind, object_id, generation, state FROM delta_resource"
                " WHERE kind <> 'receipt'"
            )
        }
        records = self.run_records()
        runs: dict[tuple[str, str], list[Run]] = {}
        for kind, object_id, run in records.values():
            runs.setdefault((kind, object_id), []).append(run)
        violations += self._check_worked(resources, runs)
        order = _check_order(runs, self.frozen_windows())
        violations += order.pop("violations")
        violations += self._check_rescues()
        effects = self._check_effects()
        violations += effects.pop("violations")
        live, live_violations = liveness.check(self.faults, self.query)
        violations += live_violations
        latencies = sorted(f.rescued_after for f in self.faults if f.rescued_after is not None)
        by_kind: dict[str, int] = {}
        rescues: dict[str, list[float]] = {}
        killed: dict[str, int] = {}
        for fault in self.faults:
            by_kind[fault.kind] = by_kind.get(fault.kind, 0) + 1
            if fault.rescued_after is not None:
                rescues.setdefault(fault.kind, []).append(fault.rescued_after)
            if fault.kind in KILL_CONNS:
                killed[fault.kind] = killed.get(fault.kind, 0) + fault.killed
        return {
            "seed": self.args.seed,
            "duration": self.args.duration,
            "supervisors": self.args.supervisors,
            "hosts": self.args.hosts,
            "link_shaper": self.hosts.shaper if self.hosts is not None else None,
            "server_timeouts": bool(self.hosts is not None and self.args.server_timeouts),
            "resources": len(resources),
            "accepted_changes": len(self.accepted),
            "informed_objects": self.informs,
            "inform_errors": self.inform_errors,
            "runs": sum(len(v) for v in runs.values()),
            "failed_runs_by_design": sum(1 for v in runs.values() for r in v if not r.ok),
            **order,
            "faults": by_kind,
            "fault_count": len(self.faults),
            "supervisor_exits": self.supervisor_exits,
            "rescues_measured": len(latencies),
            "rescue_max_s": round(latencies[-1], 3) if latencies else None,
            "rescue_p99_s": round(_percentile(latencies, 0.99), 3) if latencies else None,
            "rescue_bound_s": RESCUE_BOUND,
            "rescues_past_plain_bound": sum(1 for x in latencies if x > RESCUE_BOUND),
            "rescue_by_fault": {
                kind: {"count": len(v), **_spread("rescue", sorted(v))}
                for kind, v in sorted(rescues.items())
            },
            "backends_killed": killed,
            "settled_in_s": round(settled_in, 1),
            "journal_only_runs": sum(1 for _, _, r in records.values() if r.journal_only),
            **({"network": self.network_figures(records)} if self.hosts is not None else {}),
            "effects": effects,
            "liveness": live,
            "violations": violations,
        }

    def frozen_windows(self) -> dict[int, tuple[float, float]]:
        """Pid -> (paused, resumed) for actors paused past the TTL with no supervisor.

        Its supervisor killed while it was stopped, nothing kills such an actor before the
        leader rescues its claims; on SIGCONT its threads go on with a work that already
        runs elsewhere. That is a frozen host, the limit every lease has (docs/reliability.md).
        """
        windows = {}
        for pause in self.faults:
            if pause.kind != "pause_actor":
                continue
            (pid,) = pause.pids
            orphaned = any(
                kill.kind == "kill_supervisor" and pid in kill.pids
                and pause.at <= kill.at <= pause.until
                for kill in self.faults
            )  # fmt: skip
            if orphaned and pause.until - pause.at > RESCUE_TTL:
                windows[pid] = (pause.at, pause.until)
        return windows

    def _check_worked(
        self, resources: dict[tuple[str, str], tuple[int, str]], runs: dict[Any, list[Run]]
    ) -> list[str]:
        """Every accepted change, and every resource's newest generation, worked; all synced."""
        found = []

        def worked(key: tuple[str, str], generation: int) -> bool:
            return any(r.ok and r.generation >= generation for r in runs.get(key, []))

        for key, generation in self.accepted.items():
            if key not in resources:
                found.append(f"lost: accepted {key} generation {generation} has no resource")
            elif not worked(key, generation):
                found.append(f"not worked: {key} generation {generation}")
        for key, (generation, state) in resources.items():
            if state != "synced":
                found.append(f"ends {state}: {key}")
            if not worked(key, generation):
                found.append(f"newest generation {generation} of {key} never worked")
        return found

    def _check_effects(self) -> dict[str, Any]:
        """The effects section of the report (see _check_effects), read from the tables."""
        completed = {
            f"{kind}/{object_id}": count
            for kind, object_id, count in self.query(COMPLETED_WORKS_BY_PARENT)
        }
        receipts = [(p, r, s) for p, r, s in self.query(RECEIPTS)]
        echoes = [(p, r) for p, r in self.query(ECHO_JOBS)]
        runs = {
            run.hex: (f"{kind}/{object_id}", ok)
            for run, kind, object_id, ok in self.query(
                "SELECT run, kind, object_id, ok FROM chaos_run"
            )
        }
        return _check_effects(completed, receipts, echoes, runs)

    def rescue_bound(self, fault: Fault) -> float:
        """The TTL plus one rescue interval, plus what other faults in the window cost.

        Rescue needs PostgreSQL (each restart in the window adds its downtime and a
        second to reconnect) and, when the victim's supervisor is gone too, a leader
        (each fault in the window that stops the leader adds a failover, `_failover`).
        """
        bound = RESCUE_BOUND
        for other in self.faults:
            if other is fault or not fault.at <= other.at <= fault.at + bound:
                continue
            if other.downtime:
                bound += other.downtime + 1.0
            elif other.kind in ("kill_leader", "kill_supervisor") or (
                other.host is not None and other.stops_leader
            ):
                bound += self._failover(other)
        if fault.stops_leader and fault.kind != "kill_leader":
            # It took the leader with it (its supervisor killed, its host cut off): rescue
            # that needs a leader waits for a failover first. (A killed leader holds no
            # claims of its own to rescue.)
            bound += self._failover(fault)
        if fault.host is not None and self.args.server_timeouts:
            bound += SESSION_END_BOUND  # its sessions' row locks, until the server ends them
        if fault.kind == "net_oneway":
            # What the host sends still arrives: a heartbeat sent in the first interval
            # after the cut commits, and the TTL counts from there.
            bound += HEARTBEAT + max(HEARTBEAT, 1.0)
        return bound

    def _failover(self, fault: Fault) -> float:
        """How long a fault that stopped the leader can hold up a rescue.

        The lease lapses a TTL after the last renewal that committed; a candidate takes
        it at its next attempt (every third of the TTL, + 10 % jitter) and its rescuer
        runs within an interval. A leader cut off one way renews once more (a renewal
        sent in the first third of the TTL after the cut still arrives), and a cut-off
        leader's sessions hold their row locks until the server ends them.
        """
        failover = LEASE_TTL + LEASE_TTL / 3 * 1.1 + RESCUE_INTERVAL
        if fault.kind == "net_oneway":
            failover += LEASE_TTL / 3
        if fault.host is not None and self.args.server_timeouts:
            failover += SESSION_END_BOUND
        return failover

    def run_records(self) -> dict[str, tuple[str, str, Run]]:
        """Run id -> (kind, object id, Run): the records in PostgreSQL and the journals.

        A recorded run ends at the latest of its own end, its record's arrival and its
        journal line; a run only in a journal (its record never arrived) counts for the
        overlap check, as a run that did not succeed.
        """
        records = {}
        for run, kind, object_id, generation, pid, host, started, ended, ok, recorded in self.query(
            "SELECT run, kind, object_id, generation, pid, host, started_at, ended_at, ok,"
            " recorded_at FROM chaos_run"
        ):
            records[run.hex] = (
                kind,
                object_id,
                Run(started, max(ended, recorded), generation, ok, pid, host),
            )
        for path in sorted(self.journal.glob("runs-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    run, kind, object_id, generation, pid, host, started, ended, _ = json.loads(
                        line
                    )
                except ValueError:
                    continue  # a line cut short by a SIGKILL
                if run in records:
                    known = records[run][2]
                    known.ended = max(known.ended, ended)
                else:
                    entry = Run(started, ended, generation, False, pid, host, journal_only=True)
                    records[run] = (kind, object_id, entry)
        return records

    def network_figures(self, records: dict[str, tuple[str, str, Run]]) -> dict[str, Any]:
        """Per network fault kind: what the cut-off host did, and how soon it worked again.

        `runs_started_during`: runs the host started while the fault lasted (it runs on:
        a partition is not a crash); `last_start_after_s`: the latest of those, from the
        fault's start (when it stopped claiming); `recovery_s`: from the fault's end to the
        first run the host started after it; `actor_exits`: the host's actors that ended
        in the fault or the second after it, by how (its supervisor's log).
        """
        figures: dict[str, Any] = {}
        for fault in self.faults:
            if fault.host is None:
                continue
            host = str(fault.host)
            starts = sorted(r.started for _, _, r in records.values() if r.host == host)
            during = [t for t in starts if fault.at <= t < fault.end]
            after = [t for t in starts if t >= fault.end]
            entry = figures.setdefault(fault.kind, {
                "count": 0, "runs_started_during": 0, "last_start_after_s": [],
                "recovery_s": [], "actor_exits": Counter(),
            })  # fmt: skip
            entry["count"] += 1
            entry["runs_started_during"] += len(during)
            if during:
                entry["last_start_after_s"].append(during[-1] - fault.at)
            if after:
                entry["recovery_s"].append(after[0] - fault.end)
            entry["actor_exits"].update(self._actor_exits(fault))
        for entry in figures.values():
            for name in ("last_start_after_s", "recovery_s"):
                values = sorted(entry.pop(name))
                spread = {k.lstrip("_"): v for k, v in _spread("", values).items()}
                entry[name.removesuffix("_s")] = {**spread, "n": len(values)}
            entry["actor_exits"] = dict(entry["actor_exits"])
        return figures

    def _actor_exits(self, fault: Fault) -> Counter[str]:
        """How the actors of the fault's host ended during it (its supervisor's JSON log)."""
        found: Counter[str] = Counter()
        log = self.log_dir / f"supervisor-{fault.host}.log"
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if '"actor.exited"' not in line and '"actor.crash_loop"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
                if fault.at <= at <= fault.end + 1.0:
                    message = entry["msg"]
                    how = "hung (killed by its supervisor)" if "hung" in message else (
                        "killed" if "SIGKILL" in message else "exited by itself"
                    )  # fmt: skip
                    found[how] += 1
        return found

    def _check_rescues(self) -> list[str]:
        found = [
            f"claims never rescued after: {f.detail}"
            for f in self.faults
            if f.claims and f.rescued_after is None
        ]
        found += [
            f"slow rescue: {f.rescued_after:.2f}s after {f.detail} "
            f"(bound {self.rescue_bound(f):.1f}s with the faults around it)"
            for f in self.faults
            if f.rescued_after is not None and f.rescued_after > self.rescue_bound(f)
        ]
        return found


@dataclass(order=True)
class Run:
    started: float
    ended: float
    generation: int
    ok: bool
    pid: int
    host: str = ""  # $CHAOS_HOST of the run's supervisor ('' without --hosts)
    journal_only: bool = False  # its record never reached PostgreSQL


def _check_order(
    runs: dict[tuple[str, str], list[Run]], frozen: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    """Overlapping runs, successful runs going back a generation, and duplicates.

    An overlap whose earlier run belongs to a frozen actor (see Harness.frozen_windows)
    and spans its resumption is counted as explained, not as a violation.
    """
    violations: list[str] = []
    overlaps = explained = backwards = duplicates = 0
    for key, entries in runs.items():
        entries.sort()
        latest: Run | None = None
        newest_ok = 0
        seen_ok: set[int] = set()
        for run in entries:
            if latest is not None and run.started < latest.ended:
                window = frozen.get(latest.pid)
                if window and latest.started <= window[1] <= latest.ended + 1.0:
                    explained += 1
                else:
                    overlaps += 1
                    violations.append(
                        f"overlap: {key} run of generation {run.generation} (pid {run.pid}) "
                        f"started {latest.ended - run.started:.3f}s before the run of "
                        f"generation {latest.generation} (pid {latest.pid}) ended"
                    )
            if latest is None or run.ended > latest.ended:
                latest = run
            if not run.ok:
                continue
            if run.generation < newest_ok:
                backwards += 1
                violations.append(
                    f"backwards: {key} worked generation {run.generation} after {newest_ok}"
                )
            newest_ok = max(newest_ok, run.generation)
            duplicates += run.generation in seen_ok
            seen_ok.add(run.generation)
    return {
        "duplicate_runs": duplicates,
        "overlaps": overlaps,
        "overlaps_of_frozen_actors": explained,
        "backwards": backwards,
        "violations": violations,
    }


def _check_effects(
    completed: dict[str, int],
    receipts: list[tuple[str, str, str]],
    echoes: list[tuple[str, str]],
    runs: dict[str, tuple[str, bool]],
) -> dict[str, Any]:
    """No effect without its committed result, no committed result without its effects.

    Every work run of a parent that makes effects (a widget, gadget or ticket, "kind/id",
    for which makes_effects() holds) makes two, named by its run id: a receipt resource
    and an echo job. A committed success is exactly one `completed` job row of its parent
    (failures end `discarded`, hand-backs `cancelled`; a rescued or stale run writes
    nothing), so per parent its completed rows, receipts and echo jobs must be as many
    (none for the other parents); per run, both effects or neither, once; and every run
    with effects must be recorded as a successful run of that parent.

    `completed`: parent -> completed job rows (every parent, 0 included); `receipts`:
    (parent, run, state); `echoes`: (parent, run); `runs`: run -> (parent, ok).
    """
    violations: list[str] = []
    receipts_of = Counter(parent for parent, _, _ in receipts)
    echoes_of = Counter(parent for parent, _ in echoes)
    for parent in sorted(set(completed) | set(receipts_of) | set(echoes_of)):
        made = (receipts_of[parent], echoes_of[parent])
        if parent not in completed:
            violations.append(
                f"effects: {made[0]} receipts and {made[1]} echo jobs name {parent}, "
                "which is no resource"
            )
            continue
        works = completed[parent] if makes_effects(parent) else 0
        if made != (works, works):
            violations.append(
                f"effects: {parent} has {works} completed works that make effects, but "
                f"{made[0]} receipts and {made[1]} echo jobs"
            )
    receipt_runs = Counter(run for _, run, _ in receipts)
    echo_runs = Counter(run for _, run in echoes)
    parent_of = {run: parent for parent, run in echoes} | {r[1]: r[0] for r in receipts}
    for run, parent in sorted(parent_of.items()):
        have = (receipt_runs[run], echo_runs[run])
        if have != (1, 1):
            violations.append(
                f"effects: run {run} of {parent} left {have[0]} receipts and {have[1]} echo "
                "jobs (both once, or neither)"
            )
        recorded = runs.get(run)
        if recorded is None:
            violations.append(f"effects: run {run} of {parent} left effects but no run record")
        elif recorded != (parent, True):
            what = "failed run" if recorded[0] == parent else f"run of {recorded[0]}"
            violations.append(f"effects of a {what}: run {run} of {parent}")
    violations += [
        f"effects: the receipt of run {run} of {parent} ends {state}"
        for parent, run, state in receipts
        if state != "synced"
    ]
    making = [(run, ok) for run, (parent, ok) in runs.items() if makes_effects(parent)]
    return {
        "parents_making_effects": sum(1 for parent in completed if makes_effects(parent)),
        "completed_works": sum(n for parent, n in completed.items() if makes_effects(parent)),
        "receipts": len(receipts),
        "receipts_by_kind": dict(sorted(Counter(p.split("/")[0] for p, _, _ in receipts).items())),
        "echo_jobs": len(echoes),
        # Runs that made effects and then failed by design: each must have left none.
        "failed_runs": sum(1 for _, ok in making if not ok),
        # Runs recorded as successful whose result was not written (the actor killed
        # before its completer wrote it, or the result stale): their effects went with it.
        "successful_runs_without_effects": sum(
            1 for run, ok in making if ok and run not in parent_of
        ),
        "violations": violations,
    }


def _within(at: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= at <= end for start, end in windows)


def _spread(name: str, values: list[float]) -> dict[str, float | None]:
    """`name`_max_s and `name`_p99_s of sorted `values`."""
    return {
        f"{name}_max_s": round(values[-1], 3) if values else None,
        f"{name}_p99_s": round(_percentile(values, 0.99), 3) if values else None,
    }


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 10)}"


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]

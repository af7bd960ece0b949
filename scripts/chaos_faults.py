"""Fault injection for the harness (scripts/chaos.py): the faults, on a seeded schedule.

FaultInjection is the part of the Harness that picks a victim, strikes it and records a
Fault (what it was, when, which claims the victim held): process kills and pauses,
PostgreSQL restarts, bursts of connection kills aimed at one component, and with
`--hosts` network faults on one host at a time (chaos_hosts.py), one host always left
whole. It also restarts supervisors that exited and times each victim's rescue.

Invariants: one supervisor (or host) always stays up and reachable, so that rescue and
leadership have somewhere to go; every fault that outlasts its injection (a pause, a
burst, a network fault) ends by itself on a timer, and `wait_healed` waits for the
network ones before the harness settles.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg
from chaos_app import RESCUE_TTL, app
from chaos_checks import KILL_CONNS, Fault
from chaos_hosts import NET_FAULTS

# How long each network fault lasts (seconds, drawn per fault): a partition past the
# rescue TTL, so that the host's heartbeats and lease lapse and its works are rescued.
NET_FAULT_SECONDS = {
    "net_partition": (RESCUE_TTL + 1.5, RESCUE_TTL + 4.0),
    "net_oneway": (RESCUE_TTL + 1.5, RESCUE_TTL + 4.0),
    "net_latency": (5.0, 10.0),
    "net_flap": (4.0, 8.0),
}
KILL_BACKENDS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = ANY(%s)"
    " AND pid <> pg_backend_pid()"
)


class FaultInjection:
    """The Harness's faults (mixed into Harness, whose state and helpers they use)."""

    def actors(self) -> list[tuple[int, int, str, str]]:
        """(actor id, pid, namespace, role) of live registered actors on this host."""
        rows = self.query(
            "SELECT id, pid, namespace, role FROM delta_actor WHERE host = %s ORDER BY id",
            (socket.gethostname(),),
        )
        return [(int(r[0]), int(r[1]), r[2], r[3]) for r in rows if _alive(int(r[1]))]

    def claims_of(self, actor_ids: list[int]) -> list[int]:
        rows = self.query(
            "SELECT id FROM delta_job WHERE state = 'running' AND claimed_by = ANY(%s)",
            (actor_ids,),
        )
        return [int(r[0]) for r in rows]

    def inject(self, kind: str) -> Fault | None:
        now = time.time()
        # Faults that outlast this call: network faults (healed by a timer), bursts.
        lasting = {**dict.fromkeys(NET_FAULTS, self.break_link)}
        lasting |= dict.fromkeys(KILL_CONNS, self.start_burst)
        if kind in lasting:
            return lasting[kind](kind, now)
        match kind:
            case "kill_actor" | "pause_actor":
                workers = [a for a in self.actors() if a[3] == "worker" and a[1] not in self.paused]
                if not workers:
                    return None
                actor_id, pid, namespace, _ = self.rng.choice(workers)
                claims = self.claims_of([actor_id])
                if kind == "kill_actor":
                    os.kill(pid, signal.SIGKILL)
                    detail = f"SIGKILL worker {namespace} pid {pid}"
                else:
                    os.kill(pid, signal.SIGSTOP)
                    self.paused.add(pid)
                    pause = self.rng.uniform(RESCUE_TTL + 1, RESCUE_TTL + 3)
                    threading.Timer(pause, self._resume, (pid,)).start()
                    detail = f"SIGSTOP worker {namespace} pid {pid} for {pause:.1f}s"
                    return Fault(
                        kind, now, detail, claims, [actor_id], pids={pid}, until=now + pause
                    )
                return Fault(kind, now, detail, claims, [actor_id])
            case "kill_leader":
                rows = self.query("SELECT actor_id, pid FROM delta_leader")
                if not rows or not _alive(int(rows[0][1])):
                    return None
                actor_id, pid = int(rows[0][0]), int(rows[0][1])
                os.kill(pid, signal.SIGKILL)
                return Fault(
                    kind, now, f"SIGKILL leader pid {pid}", [], [actor_id], stops_leader=True
                )
            case "kill_supervisor":
                live = [(i, p) for i, p in enumerate(self.supervisors) if p and p.poll() is None]
                if len(live) < 2:
                    return None  # keep one running: restarts are the point, not an outage
                slot, proc = self.rng.choice(live)
                children = _children(proc.pid)
                victims = [a[0] for a in self.actors() if a[1] in children]
                claims = self.claims_of(victims)
                leader = {int(r[0]) for r in self.query("SELECT pid FROM delta_leader")}
                proc.kill()
                proc.wait()
                self.supervisors[slot] = None  # ours to restart, below
                delay = self.rng.uniform(0.5, 3.0)
                threading.Timer(delay, self.start_supervisor, (slot,)).start()
                detail = f"SIGKILL supervisor {slot} pid {proc.pid}, restart in {delay:.1f}s"
                if leader & children:
                    detail += " (the leader's)"
                fault = Fault(kind, now, detail, claims, victims, pids=children)
                fault.stops_leader = bool(leader & children)
                return fault
            case "pg_restart_fast" | "pg_restart_immediate":
                mode = kind.rsplit("_", 1)[1]
                self.cluster.restart(mode)
                down = time.time() - now
                detail = f"PostgreSQL restarted ({mode}, {down:.1f}s)"
                return Fault(kind, now, detail, downtime=down, stops_leader=True)
            case "terminate_backends":
                rows = self.query(
                    "SELECT count(pg_terminate_backend(pid)) FROM ("
                    " SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() ORDER BY random() LIMIT 8) t"
                )
                return Fault(kind, now, f"terminated {rows[0][0]} backends")
        raise AssertionError(kind)

    def break_link(self, kind: str, now: float) -> Fault | None:
        """A network fault on one host, healed by a timer; one host always stays whole."""
        assert self.hosts is not None
        whole = [h for h in self.hosts.hosts if h.faulted_until < now]
        if len(whole) < 2:
            return None
        host = self.rng.choice(whole)
        seconds = self.rng.uniform(*NET_FAULT_SECONDS[kind])
        proc = self.supervisors[host.index]
        children = _children(proc.pid) if proc is not None and proc.poll() is None else set()
        victims = [a[0] for a in self.actors() if a[1] in children]
        # Rescue is due only where the host's heartbeats stop reaching PostgreSQL for long.
        claims = self.claims_of(victims) if kind in ("net_partition", "net_oneway") else []
        leader = {int(r[0]) for r in self.query("SELECT pid FROM delta_leader")}
        detail = self.hosts.break_link(host, kind, seconds, self.rng)
        if leader & children:
            detail += " (the leader's)"
        fault = Fault(kind, now, detail, claims, victims, pids=children, until=now + seconds)
        fault.host = host.index
        fault.stops_leader = bool(leader & children) and kind != "net_latency"
        return fault

    def wait_healed(self) -> None:
        """Wait until every network fault is over (their timers heal them)."""
        if self.hosts is None:
            return
        end = max((h.faulted_until for h in self.hosts.hosts), default=0.0)
        time.sleep(max(0.0, end - time.time() + 0.5))

    def start_burst(self, kind: str, now: float) -> Fault:
        """Kill one component's backends again and again for a few seconds, in a thread."""
        namespace = self.rng.choice(sorted(app.namespaces))
        names = [name.format(namespace=namespace) for name in KILL_CONNS[kind]]
        length, every = self.rng.uniform(2.0, 6.0), self.rng.uniform(0.2, 0.5)
        detail = f"pg_terminate_backend of {', '.join(names)} every {every:.2f}s for {length:.1f}s"
        fault = Fault(kind, now, detail, until=now + length)
        burst = threading.Thread(target=self._burst, args=(fault, names, every), daemon=True)
        burst.start()
        self.bursts.append(burst)
        return fault

    def _burst(self, fault: Fault, application_names: list[str], every: float) -> None:
        while time.time() < fault.until:
            with contextlib.suppress(psycopg.OperationalError):
                fault.killed += self.query(KILL_BACKENDS, (application_names,))[0][0]
            time.sleep(every)

    def _resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def fault_kinds(self) -> list[str]:
        """The deck: every fault kind once (those --faults selects)."""
        kinds = ["kill_actor", "kill_leader", "kill_supervisor", "pause_actor"]
        kinds += ["terminate_backends", *KILL_CONNS]
        if self.hosts is not None:
            kinds += NET_FAULTS
        if self.cluster is not None:
            kinds += ["pg_restart_fast", "pg_restart_immediate"]
        if self.args.faults is not None:
            kinds = [kind for kind in kinds if kind in self.args.faults]
        return kinds

    def run_faults(self, duration: float) -> None:
        """Inject faults for `duration` seconds, and past it (up to three times as long)
        until each kind of the first deck got in: a fault that found no target (no live
        actor, no free host) goes back into the deck, so a slow machine, where faults
        take longer, still runs every kind it was asked for. A burst finds out only as it
        ends: one that killed no backend (its component was between connections all
        along, or gone with a leader just killed) goes back too, and the run waits for
        the bursts of kinds that have killed nothing yet."""
        deck: list[str] = []
        first_deck_left: set[str] | None = None
        start = time.monotonic()
        end, cap = start + duration, start + 3 * duration
        while time.monotonic() < cap and (
            time.monotonic() < end or first_deck_left or self._bursts_in_doubt()
        ):
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.restart_exited()
            for kind in self._bursts_without_victims():
                deck.insert(0, kind)
                if first_deck_left is not None:
                    first_deck_left.add(kind)
            if not deck:
                deck = self.fault_kinds()
                self.rng.shuffle(deck)
                if first_deck_left is None:
                    first_deck_left = set(deck)
            if not deck:
                continue  # --faults none: a clean run
            kind = deck.pop()
            try:
                fault = self.inject(kind)
            except psycopg.OperationalError as exc:
                print(f"  could not inject {kind}: {exc}", flush=True)
                deck.insert(0, kind)
                continue
            if fault is None:
                deck.insert(0, kind)  # no target just now: it comes later
                continue
            first_deck_left.discard(kind)
            self.faults.append(fault)
            print(f"  {time.strftime('%H:%M:%S')} {fault.detail}", flush=True)
        if first_deck_left:
            print(f"  not injected in {3 * duration:.0f}s: {sorted(first_deck_left)}", flush=True)

    def _bursts_in_doubt(self) -> bool:
        """A burst still on whose kind has killed no backend in this run so far."""
        killed = {f.kind for f in self.faults if f.kind in KILL_CONNS and f.killed}
        return any(
            f.kind in KILL_CONNS and f.kind not in killed and time.time() <= f.until + 0.5
            for f in self.faults
        )

    def _bursts_without_victims(self) -> list[str]:
        """Kinds of bursts that ended having killed nothing, each reported once, unless
        another burst of the kind killed something."""
        killed = {f.kind for f in self.faults if f.kind in KILL_CONNS and f.killed}
        kinds = []
        for fault in self.faults:
            if fault.kind not in KILL_CONNS or fault.retried or time.time() <= fault.until + 0.5:
                continue
            fault.retried = True
            if fault.kind not in killed:
                print(f"  {fault.detail}: no backend to kill; it comes again", flush=True)
                kinds.append(fault.kind)
        return kinds

    def restart_exited(self) -> None:
        """A supervisor that exited by itself is started again, as systemd would.

        `supervise` refuses to start while PostgreSQL is unreachable (exit 2); a restart
        fault right at its start does that. Any exit is reported with its code.
        """
        for slot, proc in enumerate(self.supervisors):
            if proc is not None and proc.poll() is not None:
                self.supervisor_exits.append(proc.returncode)
                print(f"  supervisor {slot} exited with {proc.returncode}; restarting it")
                self.start_supervisor(slot)

    def watch_rescues(self) -> None:
        """Time until each victim's claims left `running` under the victim."""
        while not self.stop_workload.is_set() or any(self._pending()):
            for fault in self._pending():
                with contextlib.suppress(psycopg.OperationalError):
                    rows = self.query(
                        "SELECT count(*) FROM delta_job WHERE id = ANY(%s)"
                        " AND state = 'running' AND claimed_by = ANY(%s)",
                        (fault.claims, fault.victims),
                    )
                    if rows[0][0] == 0:
                        fault.rescued_after = time.time() - fault.at
            time.sleep(0.05)

    def _pending(self) -> list[Fault]:
        return [
            f
            for f in self.faults
            if f.claims and f.rescued_after is None and time.time() - f.at < 120
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found

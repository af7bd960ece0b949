"""Fault injection: run a workload under real faults, then check the invariants.

    python scripts/chaos.py --seed 1 --duration 120            # the full run (20,000 resources)
    python scripts/chaos.py --seed 1 --duration 40 --resources 2000 --json out.json
    python scripts/chaos.py --faults none --duration 60 --resources 1500   # a clean run
    python scripts/chaos.py --faults kill_conns_lease,kill_leader          # only these

What it does:

1. Starts its own throwaway PostgreSQL cluster (it restarts it as a fault), migrates a
   database, and starts `--supervisors` real `delta-actors supervise` processes running
   the app defined below: three kinds in two namespaces (`alpha`: async controllers, one
   process; `beta`: a plain-def controller, two processes). Every work records its run
   (kind, id, generation seen, start, end, pid, outcome) in `chaos_run`, committed before
   it returns. One kind fails the first attempt of about one resource in eight. A fourth
   kind, `beacon`, has an informer (every INFORM_INTERVAL) that lists nothing and records
   when it runs; a plain job, `chaos-probe`, records when it was due and when it ran.
   The works of one resource in EFFECTS_ONE_IN (makes_effects) also make two effects with
   `delta.work_context()`, named by the run's id, before the run is recorded and before a
   failure by design: they inform a `receipt` (a fifth kind, in `alpha`, whose work does
   nothing) and enqueue a plain job, `chaos-echo` (a no-op).
2. Informs `--resources` objects in bursts, then keeps re-informing random subsets with
   changes (and some unchanged or stale copies) while the faults run. Every inform that
   returned is an accepted change: (kind, id) -> the generation it produced.
3. Injects faults on a seeded schedule, drawn from a shuffled deck so that each kind of
   fault happens about equally often: SIGKILL of a worker actor, of the leader actor, of a
   whole supervisor (started again after a moment); SIGSTOP of an actor for longer than
   the rescue TTL, then SIGCONT; PostgreSQL restarted in fast and immediate mode;
   backends killed with pg_terminate_backend: 8 at random, or, for a burst of 2-6 s
   every 0.2-0.5 s, all backends of one component, picked by the `application_name` its
   connections carry (KILL_CONNS: the leader's pool, the lease connection, a namespace's
   claim connection, its pool (the completer), its LISTEN connection).
4. Stops faulting, lets the system settle, and checks:
   - every accepted change was worked (a successful run) with its generation or a newer
     one, and every resource ends synced with its newest generation worked;
   - no two runs of one resource overlapped in time;
   - no successful run of an older generation came after one of a newer generation;
   - after every kill or pause, the victim's claims left `running` within the rescue TTL
     plus one rescue interval (max and p99 reported);
   - duplicate runs (same resource and generation, both successful) are counted;
   - effects with results: per resource that makes effects, as many receipts and echo
     jobs as completed job rows (its committed successes); per run both or neither, once;
     none from a failed run or from a run that was not recorded (_check_effects).
   Throughout the run (class Liveness), a sampler checks that while one leader holds the
   lease, the informer runs and due jobs are promoted within LIVENESS_BOUND.

Prints a report, writes it as JSON with --json, and exits 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from chaos_app import (
    HANG_TIMEOUT,
    HEARTBEAT,
    KINDS,
    LEASE_TTL,
    PROBE_TABLES,
    RESCUE_TTL,
    RUNS_TABLE,
    app,
    make_object,
)  # fmt: skip
from chaos_checks import KILL_CONNS, Fault, HarnessChecks
from chaos_liveness import Liveness

import delta_actors as delta

KILL_BACKENDS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = %s"
    " AND pid <> pg_backend_pid()"
)


# ------------------------------------------------------------------------ the harness


class Harness(HarnessChecks):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.log_dir = Path(args.log_dir or Path.cwd() / ".chaos")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster: Any = None
        self.dsn = ""
        self.supervisors: list[subprocess.Popen[bytes] | None] = []
        self.accepted: dict[tuple[str, str], int] = {}
        self.informs = 0
        self.inform_errors = 0
        self.faults: list[Fault] = []
        self.supervisor_exits: list[int] = []  # exit codes of supervisors that ended by themselves
        self.paused: set[int] = set()
        self.bursts: list[threading.Thread] = []
        self.stop_workload = threading.Event()
        self.lock = threading.Lock()

    # -- setup / teardown

    def start_database(self) -> None:
        if self.args.dsn:
            self.dsn = self.args.dsn
        else:
            from delta_actors.local.cluster import throwaway_cluster

            self.cluster = throwaway_cluster()
            with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
                # The throwaway cluster acknowledges commits before their WAL is written;
                # an immediate shutdown then loses commits that the workload saw succeed.
                # That is PostgreSQL's documented trade, not ours to test: commit for real
                # (fsync stays off: the OS does not crash here, only PostgreSQL).
                conn.execute("ALTER SYSTEM SET synchronous_commit = on")
                conn.execute("SELECT pg_reload_conf()")
                conn.execute("CREATE DATABASE chaos")
            self.dsn = self.cluster.dsn("chaos")
        from delta_actors.db.migrations import migrate

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
            conn.execute(RUNS_TABLE)
            for table in PROBE_TABLES:
                conn.execute(table)  # type: ignore[arg-type]

    def start_supervisor(self, slot: int) -> None:
        env = {
            **os.environ,
            "DELTA_DATABASE_URL": self.dsn,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
        }
        argv = [
            sys.executable, "-m", "delta_actors", "supervise", "--app", "chaos_app:app",
            "--heartbeat-interval", str(HEARTBEAT), "--hang-timeout", str(HANG_TIMEOUT),
            "--rescue-ttl", str(RESCUE_TTL), "--lease-ttl", str(LEASE_TTL),
            "--shutdown-timeout", "5", "--log-format", "json",
        ]  # fmt: skip
        log = (self.log_dir / f"supervisor-{slot}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        log.close()
        while len(self.supervisors) <= slot:
            self.supervisors.append(None)
        self.supervisors[slot] = proc

    def stop_all(self) -> None:
        for pid in list(self.paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for proc in self.supervisors:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.supervisors:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove_database(self) -> None:
        if self.cluster is not None:
            self.cluster.remove()

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    # -- workload

    def workload(self) -> None:
        client = self._client()
        total = self.args.resources
        kinds = list(KINDS)
        versions = {(kind, i): 1 for kind in kinds for i in range(total // len(kinds))}
        keys = list(versions)
        # The initial bursts: every resource once.
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            self._inform(client, [make_object(k, i, 1) for k, i in batch])
        # Then changes, unchanged and stale copies, while the faults run.
        while not self.stop_workload.is_set():
            batch = self.rng.sample(keys, min(200, len(keys)))
            objects = []
            for key in batch:
                roll = self.rng.random()
                if roll < 0.7:
                    versions[key] += 1
                    objects.append(make_object(key[0], key[1], versions[key]))
                elif roll < 0.9:
                    objects.append(make_object(key[0], key[1], versions[key]))
                else:
                    objects.append(make_object(key[0], key[1], max(1, versions[key] - 1)))
            self._inform(client, objects)
            time.sleep(0.05)
        client.close()

    def _client(self) -> delta.Client:
        while True:
            try:
                return delta.Client.connect(self.dsn, app=app)
            except delta.DatabaseError:
                time.sleep(0.5)

    def _inform(self, client: delta.Client, objects: list[delta.Object]) -> None:
        # One batch per kind, as an informer would send them.
        for kind in KINDS:
            group = [o for o in objects if o.kind == kind]  # type: ignore[attr-defined]
            if not group:
                continue
            for _ in range(60):
                try:
                    results = client.inform_many(group)
                except delta.DatabaseError:
                    # Outcome unknown (the connection died at commit?): not counted as
                    # accepted; the checker's end-state check covers it either way.
                    self.inform_errors += 1
                    time.sleep(0.25)
                    continue
                with self.lock:
                    self.informs += len(results)
                    for result in results:
                        resource = result.resource
                        if result.outcome in (
                            delta.InformOutcome.CREATED,
                            delta.InformOutcome.UPDATED,
                        ):
                            key = (resource.kind, resource.object_id)
                            self.accepted[key] = max(self.accepted.get(key, 0), resource.generation)
                break

    # -- faults

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
            case _ if kind in KILL_CONNS:
                return self.start_burst(kind, now)
        raise AssertionError(kind)

    def start_burst(self, kind: str, now: float) -> Fault:
        """Kill one component's backends again and again for a few seconds, in a thread."""
        name = KILL_CONNS[kind].format(namespace=self.rng.choice(sorted(app.namespaces)))
        length, every = self.rng.uniform(2.0, 6.0), self.rng.uniform(0.2, 0.5)
        detail = f"pg_terminate_backend of {name} every {every:.2f}s for {length:.1f}s"
        fault = Fault(kind, now, detail, until=now + length)
        burst = threading.Thread(target=self._burst, args=(fault, name, every), daemon=True)
        burst.start()
        self.bursts.append(burst)
        return fault

    def _burst(self, fault: Fault, application_name: str, every: float) -> None:
        while time.time() < fault.until:
            with contextlib.suppress(psycopg.OperationalError):
                fault.killed += self.query(KILL_BACKENDS, (application_name,))[0][0]
            time.sleep(every)

    def _resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def fault_kinds(self) -> list[str]:
        """The deck: every fault kind once (those --faults selects)."""
        kinds = ["kill_actor", "kill_leader", "kill_supervisor", "pause_actor"]
        kinds += ["terminate_backends", *KILL_CONNS]
        if self.cluster is not None:
            kinds += ["pg_restart_fast", "pg_restart_immediate"]
        if self.args.faults is not None:
            kinds = [kind for kind in kinds if kind in self.args.faults]
        return kinds

    def run_faults(self, duration: float) -> None:
        deck: list[str] = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.restart_exited()
            if not deck:
                deck = self.fault_kinds()
                self.rng.shuffle(deck)
            if not deck:
                continue  # --faults none: a clean run
            kind = deck.pop()
            try:
                fault = self.inject(kind)
            except psycopg.OperationalError as exc:
                print(f"  could not inject {kind}: {exc}", flush=True)
                continue
            if fault is not None:
                self.faults.append(fault)
                print(f"  {time.strftime('%H:%M:%S')} {fault.detail}", flush=True)

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

    # -- settle and check

    def settle(self, timeout: float) -> float:
        for pid in list(self.paused):
            self._resume(pid)
        self.restart_exited()
        started = time.monotonic()
        while None in self.supervisors and time.monotonic() - started < 5:
            time.sleep(0.1)  # a killed supervisor's restart timer is about to fire
        while time.monotonic() - started < timeout:
            with contextlib.suppress(psycopg.OperationalError):
                rows = self.query(
                    "SELECT (SELECT count(*) FROM delta_resource WHERE state <> 'synced'),"
                    " (SELECT count(*) FROM delta_job WHERE resource_id IS NOT NULL"
                    "  AND state IN ('available', 'scheduled', 'retryable', 'running'))"
                )
                if rows[0] == (0, 0):
                    return time.monotonic() - started
            time.sleep(0.5)
        return -1.0


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


def print_report(report: dict[str, Any]) -> None:
    print("\nchaos report")
    _print_figures({k: v for k, v in report.items() if k != "violations"}, "  ")
    if report["violations"]:
        print(f"\n{len(report['violations'])} VIOLATIONS:")
        for line in report["violations"][:50]:
            print(f"  - {line}")
    else:
        print("\n  no invariant broke")


def _print_figures(figures: dict[str, Any], indent: str) -> None:
    """One figure a line; a section (a dict of dicts, the liveness or effects dict) indented."""
    for key, value in figures.items():
        nested = isinstance(value, dict) and any(isinstance(v, dict) for v in value.values())
        if nested or key in ("liveness", "effects"):
            print(f"{indent}{key}")
            _print_figures(value, indent + "  ")
        else:
            print(f"{indent}{key:26} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--supervisors", type=int, default=2, choices=[2, 3])
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--dsn", help="an external database (no PostgreSQL restarts then)")
    parser.add_argument("--log-dir", help="where supervisor logs go (default ./.chaos)")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database running for a look afterwards"
    )
    parser.add_argument(
        "--faults",
        type=lambda text: set() if text == "none" else set(text.split(",")),
        help="only these fault kinds, comma-separated; 'none' for a clean run (default: all)",
    )
    args = parser.parse_args()
    # The harness's own client reconnects through every fault; its pool's warnings are noise.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    harness = Harness(args)
    harness.start_database()
    try:
        for slot in range(args.supervisors):
            harness.start_supervisor(slot)
        workload = threading.Thread(target=harness.workload, daemon=True)
        watcher = threading.Thread(target=harness.watch_rescues, daemon=True)
        liveness = Liveness(harness.dsn)
        print(f"chaos: seed {args.seed}, {args.resources} resources, {args.duration:g}s of faults")
        workload.start()
        watcher.start()
        liveness.start()
        harness.run_faults(args.duration)
        harness.stop_workload.set()
        workload.join()
        for burst in harness.bursts:
            burst.join()
        settled_in = harness.settle(args.settle_timeout)
        liveness.join()
        watcher.join(timeout=130)
        report = harness.check(settled_in, liveness)
    finally:
        harness.stop_all()
        if args.keep:
            print(f"database kept: psql '{harness.dsn}'")
        else:
            harness.remove_database()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection: run a workload under real faults, then check the invariants.

    python scripts/chaos.py --seed 1 --duration 120            # the full run (20,000 resources)
    python scripts/chaos.py --seed 1 --duration 40 --resources 2000 --json out.json
    python scripts/chaos.py --faults none --duration 60 --resources 1500   # a clean run
    python scripts/chaos.py --faults kill_conns_lease,kill_leader          # only these
    python scripts/chaos.py --hosts 3 --faults net_partition --duration 40  # across hosts

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
   claim connection, its pool and its results connection (the completer), its LISTEN
   connection).
   With `--hosts N` each supervisor runs as a host of its own: a network namespace on a
   veth pair, TCP to PostgreSQL (chaos_hosts.py), and the deck adds network faults on one
   host at a time, one host always left whole: a partition past the rescue TTL, a one-way
   partition, 200 ms +/- 50 ms latency with 5 % loss, a flapping link.
4. Stops faulting, lets the system settle, and checks:
   - every accepted change was worked (a successful run) with its generation or a newer
     one, and every resource ends synced with its newest generation worked;
   - no two runs of one resource overlapped in time (a run lasts from its start to the
     latest of its end, its record's arrival in PostgreSQL and its journal line: runs
     whose record never arrived, from the journal each process keeps, count too);
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
import atexit
import contextlib
import json
import logging
import os
import random
import shutil
import signal
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
from chaos_checks import Fault, HarnessChecks
from chaos_faults import FaultInjection
from chaos_hosts import SERVER_TIMEOUTS, Hosts, unavailable
from chaos_liveness import Liveness

import delta_actors as delta

# ------------------------------------------------------------------------ the harness


class Harness(FaultInjection, HarnessChecks):
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
        # --hosts: each supervisor in a network namespace of its own, over TCP (chaos_hosts)
        self.hosts: Hosts | None = None
        self.journal = self.log_dir / f"journal-{os.getpid()}"
        self.journal.mkdir(exist_ok=True)

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
                # Rescue waiting on a lock held by a cut-off host's session shows in the log.
                conn.execute("ALTER SYSTEM SET log_lock_waits = on")
                # The liveness sampler times a due job from its commit (chaos_liveness).
                conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
                conn.execute("CREATE DATABASE chaos")
            if self.args.hosts:
                self.start_hosts()  # restarts PostgreSQL, with its own settings too
            else:
                self.cluster.restart("fast")  # track_commit_timestamp takes a restart
            self.dsn = self.cluster.dsn("chaos")
        from delta_actors.db.migrations import migrate

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
            conn.execute(RUNS_TABLE)
            for table in PROBE_TABLES:
                conn.execute(table)  # type: ignore[arg-type]

    def start_hosts(self) -> None:
        """Make the namespaced hosts and let PostgreSQL listen on their links too."""
        self.hosts = Hosts(self.args.hosts, self.log_dir)
        atexit.register(self.hosts.remove)  # also when the run fails before `finally`
        self.hosts.create()
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            addresses = ",".join(["localhost", *self.hosts.listen_addresses()])
            conn.execute(f"ALTER SYSTEM SET listen_addresses = '{addresses}'")  # type: ignore[arg-type]
            if self.args.server_timeouts:
                # A cut-off host's session can hold row locks in an open transaction, and
                # PostgreSQL keeps it until TCP gives up (hours): rescue, and every other
                # writer of those rows, waits for the partition to heal. These end such
                # sessions within the rescue TTL (docs/reliability.md, docs/operations.md).
                for name, value in SERVER_TIMEOUTS.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")  # type: ignore[arg-type]
        with (self.cluster.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(self.hosts.hba_line() + "\n")
        self.cluster.restart("fast")

    def host_dsn(self, slot: int) -> str:
        """The DSN supervisor `slot` uses: over TCP from its host, or the Unix socket."""
        if self.hosts is None:
            return self.dsn
        host = self.hosts.hosts[slot]
        return psycopg.conninfo.make_conninfo(
            self.dsn, host=host.server_address, port=str(self.cluster.port)
        )

    def start_supervisor(self, slot: int) -> None:
        env = {
            **os.environ,
            "DELTA_DATABASE_URL": self.host_dsn(slot),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
            "CHAOS_HOST": "" if self.hosts is None else str(slot),
            "CHAOS_JOURNAL": str(self.journal),
        }
        argv = [
            sys.executable, "-m", "delta_actors", "supervise", "--app", "chaos_app:app",
            "--heartbeat-interval", str(HEARTBEAT), "--hang-timeout", str(HANG_TIMEOUT),
            "--rescue-ttl", str(RESCUE_TTL), "--lease-ttl", str(LEASE_TTL),
            "--shutdown-timeout", "5", "--log-format", "json",
        ]  # fmt: skip
        if self.hosts is not None:
            argv = self.hosts.command(self.hosts.hosts[slot], argv)
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
        if self.hosts is not None:
            self.hosts.remove()
        if self.cluster is not None:
            with contextlib.suppress(OSError):  # the server's log, kept with the others
                shutil.copy(self.cluster.log_file, self.log_dir / "postgresql.log")
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
    parser.add_argument(
        "--hosts", type=int, default=0, choices=[0, 2, 3, 4],
        help="run the supervisors as this many separate hosts (network namespaces, TCP to "
        "PostgreSQL) and add the network faults; 0 (default): one host, Unix socket",
    )  # fmt: skip
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument(
        "--server-timeouts", choices=["on", "off"], default="on",
        help="with --hosts: end a cut-off host's sessions within the TTL (default on)",
    )  # fmt: skip
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
    if args.hosts:
        if args.dsn:
            parser.error("--hosts needs PostgreSQL of its own (it listens on the hosts' links)")
        reason = unavailable()
        if reason:
            print(f"chaos: cannot make hosts here: {reason}", file=sys.stderr)
            return 3
        args.supervisors = args.hosts
    args.server_timeouts = args.server_timeouts == "on"
    # The harness's own client reconnects through every fault; its pool's warnings are noise.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

    # A SIGTERM (a test's timeout, say) unwinds through `finally`: supervisors stopped,
    # namespaces and the cluster removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    harness = Harness(args)
    try:
        harness.start_database()
        for slot in range(args.supervisors):
            harness.start_supervisor(slot)
        workload = threading.Thread(target=harness.workload, daemon=True)
        watcher = threading.Thread(target=harness.watch_rescues, daemon=True)
        liveness = Liveness(harness.dsn)
        where = f", {args.hosts} hosts" if args.hosts else ""
        print(f"chaos: seed {args.seed}, {args.resources} resources{where}, {args.duration:g}s")
        workload.start()
        watcher.start()
        liveness.start()
        harness.run_faults(args.duration)
        harness.wait_healed()
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

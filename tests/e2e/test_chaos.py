"""The fault-injection run, short: real supervisors, real signals, PostgreSQL restarts.

`scripts/chaos.py` runs a workload under a seeded schedule of faults (process kills and
pauses, PostgreSQL restarts, bursts of connection kills aimed at one component) and checks
the invariants afterwards (nothing lost, no overlapping runs, no going back a generation,
rescues within the TTL, every committed result with its effects and no effect without
one) and, throughout the run, that the leader's informers and job promotion keep going.
Here it runs for about a minute; docs/reliability.md has the long run. With
`$DELTA_TEST_DSN` it runs against that server, without restarting it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import ROOT


def test_a_short_seeded_fault_run_breaks_no_invariant(pg_server, dsn, tmp_path):
    report_path = tmp_path / "report.json"
    argv = [
        sys.executable, str(ROOT / "scripts" / "chaos.py"), "--seed", "7", "--duration", "40",
        "--resources", "1500", "--settle-timeout", "120", "--log-dir", str(tmp_path),
        "--json", str(report_path),
    ]  # fmt: skip
    if pg_server.cluster is None:
        argv += ["--dsn", dsn]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=400, cwd=ROOT, check=False
    )
    assert report_path.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["violations"] == [], result.stdout[-5000:]
    assert result.returncode == 0
    kinds = {"kill_actor", "kill_leader", "kill_supervisor", "pause_actor", "terminate_backends"}
    kinds |= {
        "kill_conns_leader_pool", "kill_conns_lease", "kill_conns_claim",
        "kill_conns_completer", "kill_conns_listener",
    }  # fmt: skip
    if pg_server.cluster is not None:
        kinds |= {"pg_restart_fast", "pg_restart_immediate"}
    assert set(report["faults"]) == kinds, report["faults"]
    assert report["resources"] == 1500
    assert report["runs"] >= report["accepted_changes"]
    assert report["rescues_measured"] > 0
    assert all(killed > 0 for killed in report["backends_killed"].values()), report
    effects = report["effects"]
    assert effects["receipts"] == effects["echo_jobs"] == effects["completed_works"] > 0, effects
    assert effects["failed_runs"] > 0, effects  # failures by design, whose effects were dropped
    assert set(effects["receipts_by_kind"]) == {"widget", "gadget", "ticket"}, effects
    liveness = report["liveness"]
    assert liveness["samples"] > liveness["samples_checked"] > 0, liveness
    assert liveness["violations"] == 0, liveness
    assert liveness["probe_runs"] > 0, liveness

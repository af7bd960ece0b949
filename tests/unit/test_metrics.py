"""Metrics: counting in the actor, the heartbeat frame, summing in the supervisor."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from delta_actors.model.gauges import ClusterGauges
from delta_actors.queue import results
from delta_actors.queue.results import WorkResult
from delta_actors.runtime import protocol
from delta_actors.runtime.metrics import Recorder, SupervisorMetrics, result_label


def synced(job_id: int = 1) -> WorkResult:
    return results.work_synced(job_id, 1, 1)


def failed(job_id: int = 1) -> WorkResult:
    return results.work_failed(job_id, 1, 1, 1.0, "{}")


def samples(metrics: SupervisorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def beat(recorder: Recorder, **gauges: int) -> protocol.Heartbeat:
    """A heartbeat as an actor sends it, after a trip through the pipe encoding."""
    message = protocol.Heartbeat(
        running=gauges.get("running", 0), claimed=0, completed=0, failed=0,
        queue_depth=gauges.get("depth", 0), max_workers=10, kinds=recorder.snapshot(),
    )  # fmt: skip
    (decoded,) = protocol.FrameReader().feed(protocol.encode(message))
    assert isinstance(decoded, protocol.Heartbeat)
    return decoded


def test_result_labels_name_every_outcome():
    """Each result a runner returns maps to one label; errors are told apart from requeues."""
    assert result_label(synced()) == "success"
    assert result_label(failed()) == "error"
    assert result_label(results.work_requeued(1, 1, 1, 5.0)) == "requeue"
    assert result_label(results.work_deleted(1, 1, 1, None)) == "deleted"
    assert result_label(results.work_deleting(1, 1, 1, None)) == "deleting"
    assert result_label(results.work_degraded(1, 1, 1, "{}")) == "degraded"
    assert result_label(results.work_of_vanished_resource(1, 1)) == "cancelled"
    assert result_label(results.work_of_unknown_kind(1, 1, 1, "{}")) == "cancelled"
    assert result_label(results.job_done(1, 1)) == "success"
    assert result_label(results.job_failed(1, 1, 5, 1.0, "{}")) == "error"
    assert result_label(results.job_failed(1, 5, 5, 1.0, "{}")) == "discarded"
    assert result_label(results.job_discarded(1, 1, "{}")) == "discarded"
    assert result_label(results.job_cancelled(1, 1, "{}")) == "cancelled"
    assert result_label(results.job_requeued(1, 1, 5.0)) == "requeue"
    assert result_label(results.job_of_unknown_kind(1, 1, "{}")) == "requeue"


def test_recorder_buckets_durations_by_their_upper_bound():
    """A run lands in the first bucket whose bound is >= its duration; the rest overflow."""
    recorder = Recorder()
    recorder.observe("task", synced(), 0.005)
    recorder.observe("task", synced(), 0.2)
    recorder.observe("task", failed(), 100.0)
    recorder.observe("mail", results.job_done(1, 1), 0.0)
    by_kind = {t.kind: t for t in recorder.snapshot()}
    task = by_kind["task"]
    assert task.is_work and not by_kind["mail"].is_work
    assert task.results == {"success": 2, "error": 1}
    assert task.buckets[0] == 1 and task.buckets[5] == 1 and task.buckets[-1] == 1
    assert sum(task.buckets) == 3
    assert task.seconds == 100.205


def test_supervisor_counters_survive_actor_restarts():
    """An ended actor's last counters stay in the totals; the restart is counted; gauges go."""
    metrics = SupervisorMetrics()
    metrics.actor_started("worker:default:0", "default")
    first = Recorder()
    for _ in range(3):
        first.observe("task", synced(), 0.01)
    metrics.actor_heartbeat("worker:default:0", beat(first, running=2, depth=7))
    got = samples(metrics)
    ns_kind = frozenset({"namespace": "default", "kind": "task"}.items())
    success = ("delta_reconcile_total", ns_kind | {("result", "success")})
    assert got[success] == 3
    assert got[("delta_queue_depth", frozenset({("namespace", "default")}))] == 7
    assert got[("delta_active_workers", frozenset({("namespace", "default")}))] == 2

    metrics.actor_ended("worker:default:0")
    got = samples(metrics)
    assert got[success] == 3
    assert ("delta_queue_depth", frozenset({("namespace", "default")})) not in got
    assert got[("delta_actor_up", frozenset({("actor", "worker:default:0")}))] == 0

    metrics.actor_started("worker:default:0", "default")
    second = Recorder()
    second.observe("task", synced(), 0.01)
    second.observe("task", failed(), 0.01)
    metrics.actor_heartbeat("worker:default:0", beat(second))
    metrics.rescued(4)
    got = samples(metrics)
    assert got[success] == 4
    assert got[("delta_reconcile_errors_total", ns_kind)] == 1
    assert got[("delta_reconcile_time_seconds_count", ns_kind)] == 5
    assert got[("delta_actor_restarts_total", frozenset({("actor", "worker:default:0")}))] == 1
    assert got[("delta_rescued_claims_total", frozenset({("by", "supervisor")}))] == 4


def test_namespace_gauges_count_a_shared_queue_once():
    """Two processes of one namespace: depth is the queue's, running works add up."""
    metrics = SupervisorMetrics()
    for index, running in enumerate((3, 4)):
        name = f"worker:reports:{index}"
        metrics.actor_started(name, "reports")
        metrics.actor_heartbeat(name, beat(Recorder(), running=running, depth=9))
    got = samples(metrics)
    reports = frozenset({("namespace", "reports")})
    assert got[("delta_queue_depth", reports)] == 9
    assert got[("delta_active_workers", reports)] == 7
    assert got[("delta_max_workers", reports)] == 20


def test_leader_counters_and_status_come_from_its_heartbeat():
    """Elections, losses, rescues and leadership reported by the leader actor are served."""
    metrics = SupervisorMetrics()
    metrics.actor_started("leader", "leader")
    metrics.actor_heartbeat(
        "leader",
        protocol.Heartbeat(0, 0, 0, 0, 0, rescued=5, is_leader=True, elected=2, lost=1),
    )
    got = samples(metrics)
    assert got[("delta_is_leader", frozenset())] == 1
    assert got[("delta_leader_transitions_total", frozenset({("transition", "elected")}))] == 2
    assert got[("delta_leader_transitions_total", frozenset({("transition", "lost")}))] == 1
    assert got[("delta_rescued_claims_total", frozenset({("by", "leader")}))] == 5
    metrics.actor_ended("leader")
    got = samples(metrics)
    assert got[("delta_is_leader", frozenset())] == 0
    assert got[("delta_leader_transitions_total", frozenset({("transition", "elected")}))] == 2


def test_cluster_gauges_come_from_the_leading_candidates_heartbeat():
    """Resources by state, paused namespaces and limited kinds' waiting works, as the
    leader read them, through the pipe encoding; nothing once it no longer leads."""
    metrics = SupervisorMetrics()
    metrics.actor_started("leader", "leader")
    cluster = ClusterGauges(
        [("order", "degraded", 40), ("order", "synced", 960)], ["billing"], [("call-api", 7)]
    )
    message = protocol.Heartbeat(0, 0, 0, 0, 0, is_leader=True, cluster=cluster)
    (decoded,) = protocol.FrameReader().feed(protocol.encode(message))
    assert isinstance(decoded, protocol.Heartbeat)
    metrics.actor_heartbeat("leader", decoded)
    got = samples(metrics)
    assert got[("delta_resources", frozenset({("kind", "order"), ("state", "degraded")}))] == 40
    assert got[("delta_resources", frozenset({("kind", "order"), ("state", "synced")}))] == 960
    assert got[("delta_namespace_paused", frozenset({("namespace", "billing")}))] == 1
    assert got[("delta_limited_waiting", frozenset({("kind", "call-api")}))] == 7
    metrics.actor_heartbeat("leader", protocol.Heartbeat(0, 0, 0, 0, 0, is_leader=False))
    assert not any(name == "delta_resources" for name, _ in samples(metrics))

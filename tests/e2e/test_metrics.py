"""End to end: `supervise --metrics-port` serves Prometheus metrics that move with the work."""

from __future__ import annotations

import os
import re
import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import delta_actors as delta
from tests.e2e.apps import Flaky, Task
from tests.e2e.conftest import Supervise
from tests.waiting import wait_until

ACTORS = 4  # workers: default x1, reports x2; plus the leader

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(process: Supervise) -> str:
    found: list[str] = []

    def announced() -> bool:
        found[:] = re.findall(r"serving metrics on (http://\S+/metrics)", process.log)
        return bool(found)

    wait_until(announced, 30, "the metrics address in the log")
    return found[0]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own http URL)
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_as_work_happens_and_survive_restarts(supervise, e2e_dsn):
    """Scrape, inform, scrape: counters, histograms and gauges move; a restart keeps them."""
    process = supervise("--metrics-port", "0", "--shutdown-timeout", "1")
    process.wait_started(ACTORS)
    url = metrics_url(process)
    assert url.startswith("http://127.0.0.1:")
    task = {"namespace": "default", "kind": "task"}
    # Gauges arrive with each actor's first heartbeat frame, which may follow its start.
    wait_until(
        lambda: value(scrape(url), "delta_max_workers", namespace="default") == 20,
        30, "the default actor's first heartbeat",
    )  # fmt: skip
    before = scrape(url)
    assert value(before, "delta_reconcile_total", **task, result="success") == 0

    with delta.Client.connect(e2e_dsn) as client:
        client.inform_many([Task(key=f"t{i}") for i in range(10)])
        client.inform(Flaky(key="f"))
    wait_until(
        lambda: value(scrape(url), "delta_reconcile_total", **task, result="success") == 10,
        30, "ten successful reconciles counted",
    )  # fmt: skip
    flaky = {"namespace": "default", "kind": "flaky"}
    wait_until(
        lambda: value(scrape(url), "delta_reconcile_errors_total", **flaky) >= 1,
        30, "the failed reconcile counted",
    )  # fmt: skip
    after = scrape(url)
    assert value(after, "delta_reconcile_time_seconds_count", **task) == 10
    assert value(after, "delta_reconcile_time_seconds_bucket", **task, le="+Inf") == 10
    assert value(after, "delta_reconcile_time_seconds_sum", **task) > 0
    assert value(after, "delta_reconcile_total", **flaky, result="error") >= 1
    assert value(after, "delta_reconcile_errors_total", **task) == 0
    assert value(after, "delta_actor_up", actor="worker:default:0") == 1
    assert value(after, "delta_actor_restarts_total", actor="worker:default:0") == 0
    assert value(after, "delta_actor_heartbeat_age_seconds", actor="leader") >= 0
    wait_until(lambda: value(scrape(url), "delta_is_leader") == 1, 30, "a leader")
    assert value(scrape(url), "delta_leader_transitions_total", transition="elected") == 1

    # Kill the default namespace's actor mid-work: its counts stay, the restart and the
    # supervisor's rescue of its claim are counted.
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="stuck", seconds=600.0))
    wait_until(
        lambda: value(scrape(url), "delta_active_workers", namespace="default") == 1,
        30, "the stuck work running",
    )  # fmt: skip
    victim = next(pid for pid, ns, role in process.actors() if ns == "default")
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: value(scrape(url), "delta_actor_restarts_total", actor="worker:default:0") == 1,
        30, "the restart counted",
    )  # fmt: skip
    restarted = scrape(url)
    assert value(restarted, "delta_reconcile_total", **task, result="success") == 10
    # At least the stuck work's claim (the flaky resource's retry may be running too).
    assert value(restarted, "delta_rescued_claims_total", by="supervisor") >= 1
    with delta.Client.connect(e2e_dsn) as client:
        client.inform(Task(key="after-restart"))
    wait_until(
        lambda: value(scrape(url), "delta_reconcile_total", **task, result="success") == 11,
        30, "the new actor's reconcile added to the old count",
    )  # fmt: skip


def test_queue_depth_and_lag_gauges_follow_the_queue(supervise, e2e_dsn):
    """Works waiting behind full slots show as depth and lag; both fall back to 0."""
    process = supervise("--metrics-port", "0")
    process.wait_started(ACTORS)
    url = metrics_url(process)
    with delta.Client.connect(e2e_dsn) as client:
        # 20 slots in the default namespace: 25 one-second works leave 5 waiting.
        client.inform_many([Task(key=f"slow{i}", seconds=1.0) for i in range(25)])
    wait_until(
        lambda: value(scrape(url), "delta_queue_depth", namespace="default") > 0,
        30, "a queue depth",
    )  # fmt: skip
    wait_until(
        lambda: value(scrape(url), "delta_active_workers", namespace="default") > 0,
        30, "active workers",
    )  # fmt: skip
    wait_until(
        lambda: value(scrape(url), "delta_queue_lag_seconds", namespace="default") > 0,
        30, "a queue lag",
    )  # fmt: skip
    task = {"namespace": "default", "kind": "task"}
    wait_until(
        lambda: value(scrape(url), "delta_reconcile_total", **task, result="success") == 25,
        60, "every work done",
    )  # fmt: skip
    wait_until(
        lambda: value(scrape(url), "delta_queue_depth", namespace="default") == 0
        and value(scrape(url), "delta_queue_lag_seconds", namespace="default") == 0,
        30, "the queue gauges back at 0",
    )  # fmt: skip
    samples = scrape(url)
    assert value(samples, "delta_reconcile_time_seconds_bucket", **task, le="0.5") == 0
    assert value(samples, "delta_reconcile_time_seconds_bucket", **task, le="+Inf") == 25


def test_metrics_port_in_use_is_a_clear_error(supervise, e2e_dsn):
    """A port that is taken: supervise exits before forking and names the option."""
    first = supervise("--metrics-port", "0")
    first.wait_started(ACTORS)
    port = metrics_url(first).split(":")[2].split("/")[0]
    second = supervise("--metrics-port", port)
    assert second.wait(30) == 2
    assert "cannot serve metrics on 127.0.0.1:" in second.log
    assert "--metrics-port" in second.log

"""End to end: a subscriber receives the results of works run by other processes."""

from __future__ import annotations

import threading

import delta_actors as delta
from tests.e2e.apps import Report, Task
from tests.waiting import wait_until

# workers: default x1, reports x2; plus the leader
ACTORS = 4


def test_a_blocking_subscriber_gets_every_result_of_every_actor_process(supervise, e2e_dsn):
    """100 tasks and 100 reports, worked by three actor processes: the sync iterator gets
    one synced event for each, and closing it ends the iteration."""
    process = supervise()
    process.wait_started(ACTORS)
    received: list[delta.Event | delta.Gap] = []
    with delta.Client.connect(e2e_dsn) as client:
        subscription = client.subscribe()
        consumer = threading.Thread(target=lambda: received.extend(subscription))
        consumer.start()
        try:
            client.inform_many([Task(key=f"t{i}") for i in range(100)])
            client.inform_many([Report(key=f"r{i}") for i in range(100)], namespace="reports")
            wait_until(lambda: len(received) >= 200, 30, "200 events")
        finally:
            subscription.close()
            consumer.join(10)
        assert not consumer.is_alive()
    assert all(isinstance(e, delta.Event) and e.event is delta.State.SYNCED for e in received)
    ids = sorted((e.kind, e.id) for e in received)  # type: ignore[union-attr]
    expected = [("report", f"r{i}") for i in range(100)] + [("task", f"t{i}") for i in range(100)]
    assert ids == sorted(expected)

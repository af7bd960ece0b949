"""The inline test Runner (delta.testing.Runner) drives the real claim, run and result paths."""

from __future__ import annotations

import asyncio
import time

import pytest

import delta_actors as delta
from delta_actors.testing import AsyncRunner, NotIdleError, Runner


class Order(delta.Object, kind="order"):
    id_: str
    total: int = 0

    def id(self) -> str:
        return self.id_


class Invoice(delta.Job, kind="send-invoice"):
    order: str


class Flaky(delta.Controller[Order]):
    """Fails while `failures` says so, then syncs; enqueues an invoice on success."""

    max_attempts = 3

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.seen: list[int] = []

    async def work(self, resource: delta.Resource[Order]) -> None:
        self.seen.append(resource.attempt)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError(f"provider down ({self.failures} more)")
        delta.work_context().enqueue(Invoice(order=resource.object_id))


sent: list[str] = []


async def send_invoice(job: Invoice) -> None:
    sent.append(job.order)


@pytest.fixture
def controller() -> Flaky:
    return Flaky()


@pytest.fixture
def delta_app(controller: Flaky) -> delta.App:
    """The plugin's clients use this app: its controllers' max_attempts and namespaces."""
    return delta.App(controllers=[controller], jobs={Invoice: send_invoice})


def test_an_informed_object_is_synced_and_its_effect_job_runs(delta_app, delta_client):
    runner = Runner(delta_app, delta_client)
    delta_client.inform(Order(id_="o1", total=10))
    results = runner.run_until_idle()
    assert results.synced == ["order/o1"]
    assert results.completed == [Invoice(order="o1")]
    assert [r.kind for r in results.runs] == ["order", "send-invoice"]
    resource = delta_client.get(Order, "o1")
    assert resource is not None and resource.state is delta.State.SYNCED
    assert runner.run_until_idle().runs == []


def test_fails_twice_then_degrades_in_milliseconds_as_the_clock_advances(
    controller, delta_app, delta_client
):
    controller.failures = 5
    runner = Runner(delta_app, delta_client, retry_policy=lambda attempt: 30.0)
    delta_client.inform(Order(id_="o1"))
    started = time.monotonic()
    assert runner.run_until_idle().failed == ["order/o1"]
    # Due in 30 s: not before the test advanced that far in all.
    assert runner.advance(29).runs == []
    assert runner.next_due_in() == pytest.approx(1.0, abs=0.5)
    assert runner.advance(1).failed == ["order/o1"]
    results = runner.advance(30)
    assert results.failed == []
    assert results.degraded == ["order/o1"]
    assert "provider down" in results.works[0].error
    assert time.monotonic() - started < 10  # no sleeping through 60 s of backoff
    assert controller.seen == [0, 1, 2]
    resource = delta_client.get(Order, "o1")
    assert resource is not None and resource.state is delta.State.DEGRADED
    assert runner.advance(3600).runs == []  # degraded: nothing is due any more

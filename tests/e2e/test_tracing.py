"""A trace crosses processes: inform here, the work in a `supervise` actor, one trace."""

from __future__ import annotations

import json
import os
from pathlib import Path

from opentelemetry import trace

import delta_actors as delta
from tests.waiting import wait_until


class Shipment(delta.Object, kind="shipment"):
    """The object of tests/e2e/traced_app.py (not imported here: it configures its SDK)."""

    key: str

    def id(self) -> str:
        return self.key


def _spans(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_the_work_span_in_an_actor_is_the_child_of_the_inform_span_here(
    supervise, e2e_dsn, spans, tmp_path, monkeypatch
):
    exported = tmp_path / "spans.jsonl"
    monkeypatch.setenv("DELTA_TEST_SPANS", str(exported))
    with (
        delta.Client.connect(e2e_dsn) as client,
        trace.get_tracer("tests").start_as_current_span("POST /shipments") as request,
    ):
        client.inform(Shipment(key="s1"))
    (inform,) = spans.named("inform ")
    process = supervise(app="tests.e2e.traced_app:app")
    wait_until(
        lambda: any(s["name"] == "work shipment" for s in _spans(exported)), 30,
        "the actor to export the work's span",
    )  # fmt: skip
    (work,) = [s for s in _spans(exported) if s["name"] == "work shipment"]
    assert work["trace_id"] == request.get_span_context().trace_id
    assert work["parent_id"] == inform.context.span_id
    assert work["pid"] != os.getpid()
    assert work["attributes"] == {
        "delta.kind": "shipment", "delta.id": "s1", "delta.namespace": "default",
        "delta.attempt": 1, "delta.handler": "work", "delta.generation": 1,
        "delta.outcome": "synced", "test.in_thread": True,
    }  # fmt: skip
    claims = [s for s in _spans(exported) if s["name"] == "claim default"]
    assert claims and claims[0]["attributes"]["delta.claimed"] == 1
    process.stop()

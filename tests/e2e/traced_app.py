"""An app for `supervise` that exports its spans to a file (`$DELTA_TEST_SPANS`), one JSON
object a line: what tests/e2e/test_tracing.py reads to follow a trace across processes."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import delta_actors as delta


class FileSpanExporter(SpanExporter):
    """Appends each finished span to a file; safe across forked processes (one write each)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(
            json.dumps({
                "name": span.name,
                "trace_id": span.context.trace_id,
                "span_id": span.context.span_id,
                "parent_id": span.parent.span_id if span.parent else None,
                "attributes": dict(span.attributes or {}),
                "pid": os.getpid(),
            }) + "\n"
            for span in spans
        )  # fmt: skip
        with self._lock, open(self._path, "a") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(os.environ["DELTA_TEST_SPANS"])))
trace.set_tracer_provider(provider)


class Shipment(delta.Object, kind="shipment"):
    key: str

    def id(self) -> str:
        return self.key


class ShipmentController(delta.Controller[Shipment]):
    def work(self, resource: delta.Resource[Shipment]) -> None:  # a thread: the span still holds
        trace.get_current_span().set_attribute("test.in_thread", True)


app = delta.App(controllers=[ShipmentController()])

"""OpenTelemetry's SDK for the tests: the `spans` fixture, an in-memory exporter.

The SDK's tracer provider can be set once per process, so the first test that asks for
spans installs it; its sampler records only while a test holds the fixture, so every
other test runs as an application with the API installed but no SDK would: no span
recorded, no trace context written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult


class _Switch(Sampler):
    """Records every span while `on`, none otherwise."""

    on = False

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "tests.spans switch"


_switch = _Switch()
_exporter = InMemorySpanExporter()
_installed = False


class Spans:
    """What the test's spans are."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def named(self, prefix: str) -> list[ReadableSpan]:
        """The finished spans whose name starts with `prefix`, oldest first."""
        finished: Sequence[ReadableSpan] = self.exporter.get_finished_spans()
        return [span for span in finished if span.name.startswith(prefix)]


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Record this test's spans (the SDK installed on first use)."""
    global _installed  # noqa: PLW0603 (one provider per process, by OpenTelemetry's rule)
    if not _installed:
        provider = TracerProvider(sampler=_switch)
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
        _installed = True
    _exporter.clear()
    _switch.on = True
    try:
        yield Spans(_exporter)
    finally:
        _switch.on = False
        _exporter.clear()

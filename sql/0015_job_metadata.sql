-- delta_actors migration 15: metadata of a job row, for the trace context of what queued it.
--
-- `metadata`: NULL unless the inform or enqueue that queued the row ran inside a recording
-- OpenTelemetry span (delta_actors/tracing.py); then the W3C trace context of that span,
-- {"traceparent": ..., "tracestate": ...}, so that the run, claimed in any process,
-- continues the trace. Nullable without a default: adding it rewrites nothing, and an
-- untraced row stores no byte of it.

ALTER TABLE delta_job ADD COLUMN metadata jsonb;

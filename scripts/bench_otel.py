"""Benchmark what OpenTelemetry tracing costs the drain, on a throwaway PostgreSQL cluster.

One worker process at concurrency 100 drains `--count` no-op resource works (informed in
batches of 5,000 beforehand) and, separately, `--count` no-op plain jobs, in three modes
alternated `--runs` times (the order rotated every run; medians reported):
- absent: the worker process cannot import `opentelemetry` (as without the `otel` extra:
  `tracing.ENABLED` is False, no middleware, nothing written);
- api: `opentelemetry-api` importable but no SDK configured (no-op spans);
- sdk: the SDK configured in the worker, every span recorded (ALWAYS_ON) and handed to a
  BatchSpanProcessor whose exporter drops them; the works' informs recorded too (their
  rows carry the trace context, their work spans are children of the inform spans);
- baseline (with `--baseline DIR`): as absent, but everything runs the delta_actors of DIR
  (a checkout of the commit before tracing): a database of its own, migrated by DIR's
  migrations, filled by DIR's client and drained by DIR's worker, each in a process
  started in DIR (checked: the worker says which package it imported). What the change
  costs an application without the extra.
For each: jobs/s from the worker's first claim to its last result written (as in
bench_queue.py), and the worker's CPU per job; for works also the inform rate of the
benchmark process (spans recorded in the sdk mode only). Every drain checks from the
table that each job completed, and in the sdk mode that each work's row carried a trace
context (and in the others that none did).

Prints a table and writes JSON (`--out`). Usage: python scripts/bench_otel.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import uvloop

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import Item, ItemController, Noop, _noop, finish_worker, reset
from benchlib import migrated_cluster, with_package_of

import delta_actors as delta

MODES = ("absent", "api", "sdk")
CONCURRENCY = 100
INFORM_BATCH = 5_000
# Run first in the worker process of the `absent` mode, before anything imports
# delta_actors: `opentelemetry` then fails to import, as when it is not installed.
ABSENT_PRELUDE = (
    "import runpy, sys; sys.modules['opentelemetry'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def configure_sdk(*, switch: bool = False) -> Any:
    """Install the SDK: every span recorded and dropped by a batching exporter.

    With `switch`, the sampler records only while its `on` is set (the benchmark process
    records its informs in the sdk mode only); it is returned.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult

    class Dropping(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class Switch(Sampler):
        on = not switch

        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

        def get_description(self) -> str:
            return "bench switch"

    sampler = Switch()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)
    return sampler


# ---------------------------------------------------------------- worker subprocess


def worker_main(dsn: str, mode: str, workload: str, count: int) -> None:
    """Run one worker until `count` jobs completed; print a JSON result line."""
    if mode != "baseline":
        from delta_actors import tracing

        assert tracing.ENABLED is (mode != "absent"), "the mode did not take"
    if mode == "sdk":
        configure_sdk()
    app = delta.App(
        jobs={Noop: _noop}, controllers=[ItemController()] if workload == "works" else []
    )

    package = str(Path(delta.__file__).resolve().parent)

    async def main() -> dict[str, object]:
        worker = delta.Worker(app, dsn, max_workers=CONCURRENCY, poll_interval=0.5)
        await worker.start()
        await worker.wait_listening()
        print(json.dumps({"ready": True, "package": package}), flush=True)
        started = None
        cpu_started = time.process_time()
        while worker.stats.completed < count or worker._completer.backlog:
            if started is None and worker.stats.claimed:
                started = time.perf_counter()
                cpu_started = time.process_time()
            await asyncio.sleep(0.0005 if started is None else 0.002)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        cpu = time.process_time() - cpu_started
        stats = dataclasses.asdict(worker.stats)
        await worker.stop()
        return {"elapsed": elapsed, "cpu": cpu, **stats}

    print(json.dumps(uvloop.run(main())), flush=True)


def start_worker(
    dsn: str, mode: str, workload: str, count: int, baseline: str | None = None
) -> subprocess.Popen[str]:
    """Start a benchmark worker process of `mode` and wait until it listens."""
    args = [__file__, "_worker", dsn, mode, workload, str(count)]
    if mode == "baseline":
        assert baseline is not None
        env = with_package_of(baseline)
    else:
        env = dict(os.environ)
    argv = [sys.executable, "-c", ABSENT_PRELUDE, *args] if mode in ("absent", "baseline") else [
        sys.executable, *args
    ]  # fmt: skip
    # `-c` puts the working directory first on sys.path: the baseline's, so that its
    # delta_actors is the one imported (the ready line says which was).
    cwd = baseline if mode == "baseline" else None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError("benchmark worker did not start")
    imported = Path(json.loads(line)["package"])
    expected = Path(baseline).resolve() if mode == "baseline" else Path(delta.__file__).parent
    if not imported.is_relative_to(expected):
        proc.kill()
        raise RuntimeError(f"the {mode} worker imported {imported}, not {expected}")
    return proc


# ---------------------------------------------------------------- measurements


def prepare_main(dsn: str, workload: str, count: int) -> None:
    """In the baseline's tree: migrate, empty and fill its database; print the inform rate."""
    from delta_actors.db import migrations

    with psycopg.connect(dsn, autocommit=True) as conn:
        migrations.migrate(conn)
    reset(dsn)
    figures = fill(dsn, workload, count)
    print(json.dumps(figures), flush=True)


def fill(dsn: str, workload: str, count: int, sampler: Any = None) -> dict[str, float]:
    """Queue `count` no-op works (informs of new objects) or plain jobs."""
    figures: dict[str, float] = {}
    with delta.Client.connect(dsn) as client:
        if workload == "works":
            if sampler is not None:
                sampler.on = True
            started = time.perf_counter()
            try:
                for first in range(0, count, INFORM_BATCH):
                    client.inform_many(
                        [Item(key=f"i{n}") for n in range(first, min(first + INFORM_BATCH, count))]
                    )
            finally:
                if sampler is not None:
                    sampler.on = False
            figures["inform_per_s"] = count / (time.perf_counter() - started)
        else:
            client.enqueue_many([Noop() for _ in range(count)])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE delta_job")
    return figures


def fill_baseline(dsn: str, baseline: str, workload: str, count: int) -> dict[str, float]:
    argv = [sys.executable, "-c", ABSENT_PRELUDE, __file__, "_prepare", dsn, workload, str(count)]
    done = subprocess.run(argv, cwd=baseline, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"filling the baseline's database failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def bench_drain(
    dsn: str,
    sampler: Any,
    *,
    mode: str,
    workload: str,
    count: int,
    baseline: str | None = None,
) -> dict[str, float]:
    """Queue `count` works or jobs, drain them in a worker of `mode`; return the figures."""
    if mode == "baseline":
        assert baseline is not None
        figures = fill_baseline(dsn, baseline, workload, count)
    else:
        reset(dsn)
        figures = fill(dsn, workload, count, sampler if mode == "sdk" else None)
    result = finish_worker(start_worker(dsn, mode, workload, count, baseline))
    with psycopg.connect(dsn, autocommit=True) as conn:
        traced_rows = (
            "0" if mode == "baseline" else "count(*) FILTER (WHERE metadata ? 'traceparent')"
        )
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'completed'), count(*), "  # type: ignore[arg-type]
            + traced_rows
            + " FROM delta_job"
        ).fetchone()
    traced = count if mode == "sdk" and workload == "works" else 0
    assert row == (count, count, traced), f"completed, all, traced: {row}"
    figures["jobs_per_s"] = count / float(result["elapsed"])
    figures["cpu_us_per_job"] = float(result["cpu"]) / count * 1e6
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=20_000, help="works, then jobs, per drain")
    parser.add_argument("--out", default="bench-results/otel.json")
    parser.add_argument("--baseline", help="a source tree of delta_actors to run as a mode too")
    args = parser.parse_args()
    modes = (*MODES, "baseline") if args.baseline else MODES
    sampler = configure_sdk(switch=True)
    runs: dict[str, list[dict[str, float]]] = {
        f"{mode}/{workload}": [] for workload in ("works", "jobs") for mode in modes
    }
    with migrated_cluster() as dsn:
        baseline_dsn = None
        if args.baseline:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE baseline")
            baseline_dsn = psycopg.conninfo.make_conninfo(dsn, dbname="baseline")
        for run in range(args.runs):
            order = modes[run % len(modes) :] + modes[: run % len(modes)]
            for workload in ("works", "jobs"):
                for mode in order:
                    figures = bench_drain(
                        baseline_dsn if mode == "baseline" else dsn, sampler,
                        mode=mode, workload=workload, count=args.count, baseline=args.baseline,
                    )  # fmt: skip
                    runs[f"{mode}/{workload}"].append(figures)
                    print(f"run {run + 1} {mode:>6} {workload}: {figures}", flush=True)
    medians = {
        key: {name: statistics.median(r[name] for r in values) for name in values[0]}
        for key, values in runs.items()
    }
    print(f"\n{'mode/workload':<14} {'jobs/s':>8} {'CPU us/job':>10} {'inform/s':>9}  runs jobs/s")
    for key, figures in medians.items():
        each = " / ".join(f"{r['jobs_per_s']:,.0f}" for r in runs[key])
        inform = f"{figures['inform_per_s']:,.0f}" if "inform_per_s" in figures else "-"
        print(
            f"{key:<14} {figures['jobs_per_s']:>8,.0f} {figures['cpu_us_per_job']:>10.1f} "
            f"{inform:>9}  {each}"
        )
    for workload in ("works", "jobs"):
        base = medians[f"absent/{workload}"]["jobs_per_s"]
        for mode in [m for m in modes if m != "absent"]:
            ratio = medians[f"{mode}/{workload}"]["jobs_per_s"] / base
            print(f"{workload}: {mode} / absent = {ratio:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "python": platform.python_version(), "cpus": os.cpu_count(), "count": args.count,
        "runs": runs, "medians": medians,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1:2] == ["_prepare"]:
        prepare_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()

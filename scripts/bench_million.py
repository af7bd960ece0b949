"""Benchmark informs, status and list pages as the resource table grows to a million.

On one throwaway cluster (PostgreSQL's default memory settings, or with `--tuned` those
the embedded database gets from this machine's memory, `local/cluster.tuned_settings`):

1. `inform_many` of `--count` new objects in batches of `--batch`: objects/s for every
   `--slice` objects, and the server time of its two statements per batch (the read of
   stored identities, then the write), so that a slope shows where it is;
2. the same objects again, unchanged (the read alone), reported the same way;
3. `status` (`ops.status.read_status`, what `delta-actors status` runs, and each of
   its statements alone), `inspect` of one resource, and `client.list` pages (the
   first, one deep by cursor, and one per filter), each the median of `--calls`.

Some resources are made different so that every filter has something to find: every
tenth batch goes to namespace `other` with tag `tenth`, `--troubled` resources are
set degraded with an error, and as many others, spread over the table, get tag `rare`.
Prints tables and writes JSON (`--out`).

Usage: python scripts/bench_million.py [--tuned] [--count 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from bench_queue import Item
from benchlib import exit_cleanly_on_sigterm

import delta_actors as delta
from delta_actors.db import migrations, resource_sql, status_sql
from delta_actors.db.connection import Rows, Statement
from delta_actors.local import cluster as local_cluster
from delta_actors.ops.status import QUEUE_PARAMS, inspect_resource, read_status
from delta_actors.resources.store import InformParams, inform, prepare

_SLOTS = {
    resource_sql.SELECT_STORED_RESOURCES: 0,
    resource_sql.SELECT_STORED_RESOURCES_FOR_UPDATE: 0,
    resource_sql.WRITE_RESOURCES: 1,
}


def timed_drive(
    conn: psycopg.Connection, steps: Generator[Statement, Rows, Any], spent: list[float]
) -> Any:
    """`db.connection.drive`, adding the wall time of the reads of stored identities to
    `spent[0]`, of the writes to `spent[1]` (a large inform's two settings of `jit` to
    neither)."""
    try:
        statement = next(steps)
        while True:
            started = time.perf_counter()
            cur = conn.execute(*statement, prepare=False)
            rows = cur.fetchall() if cur.description else []
            slot = _SLOTS.get(statement[0])
            if slot is not None:
                spent[slot] += time.perf_counter() - started
            statement = steps.send(rows)
    except StopIteration as stop:
        return stop.value


def backend_cpu(pid: int) -> float:
    """CPU seconds a PostgreSQL backend has used (user + system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inform_slices(
    conn: psycopg.Connection, count: int, batch: int, slice_: int, *, value: int
) -> list[dict[str, float]]:
    """Inform `count` objects in batches, one transaction each; a report per slice.

    Wall time depends on what else the machine runs; the backend's CPU time per batch
    much less so: both are reported.
    """
    slices: list[dict[str, float]] = []
    pid = conn.info.backend_pid
    started = time.perf_counter()
    cpu = backend_cpu(pid)
    spent = [0.0, 0.0]  # the read of stored identities, the write
    for first in range(0, count, batch):
        number = first // batch
        other = number % 10 == 9
        params = InformParams(
            namespace="other" if other else None, tags=("tenth",) if other else ()
        )
        objects = [Item(key=f"item-{i}", value=value) for i in range(first, first + batch)]
        items = prepare(objects, params, None)
        with conn.transaction():
            timed_drive(conn, inform(items, params), spent)
        if (first + batch) % slice_ == 0:
            elapsed = time.perf_counter() - started
            batches = slice_ / batch
            server_ms = (backend_cpu(pid) - cpu) * 1000 / batches
            slices.append(
                {
                    "objects_per_s": slice_ / elapsed,
                    "read_ms_per_batch": spent[0] * 1000 / batches,
                    "write_ms_per_batch": spent[1] * 1000 / batches,
                    "server_cpu_ms_per_batch": server_ms,
                }
            )
            print(
                f"  {first + batch:>9,}: {slice_ / elapsed:>8,.0f} objects/s, per batch "
                f"read {spent[0] * 1000 / batches:6.1f} ms, write {spent[1] * 1000 / batches:6.1f}"
                f", server CPU {server_ms:6.1f} ms",
                file=sys.stderr,
            )
            started = time.perf_counter()
            cpu = backend_cpu(pid)
            spent = [0.0, 0.0]
    return slices


def median_ms(call: Callable[[], object], calls: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), times


def read_timings(dsn: str, count: int, calls: int) -> dict[str, float]:
    """Medians, in ms, of status, its statements, inspect and list pages."""
    out: dict[str, float] = {}

    def record(name: str, call: Callable[[], object]) -> None:
        call()  # once to warm the connection and the caches
        out[name], runs = median_ms(call, calls)
        print(f"  {name:<40}{out[name]:>9.1f} ms  ({', '.join(f'{t:.0f}' for t in runs)})")

    with psycopg.connect(dsn, autocommit=True) as conn:
        record("status (read_status)", lambda: read_status(conn))
        for name in dir(status_sql):
            statement = getattr(status_sql, name)
            # Queries only: a setting (WITHOUT_JIT) is a part of a transaction, not a read.
            query = isinstance(statement, str) and not statement.startswith("SET ")
            if name.isupper() and query and "%s" not in statement:
                args = {**QUEUE_PARAMS, "limit": 10, "id": 1}
                record(f"  {name}", lambda s=statement, a=args: conn.execute(s, a).fetchall())
        middle = f"item-{count // 2}"
        record("inspect", lambda: inspect_resource(conn, "item", middle))
    with delta.Client.connect(dsn) as client:
        first = client.list(Item)
        deep = f"item/item-{count * 3 // 4}"
        pages: dict[str, Callable[[], object]] = {
            "list: first page": lambda: client.list(Item),
            "list: second page (cursor)": lambda: client.list(Item, after=first.next),
            "list: a page deep (cursor)": lambda: client.list(Item, after=deep),
            "list: state=scheduled": lambda: client.list(Item, state="scheduled"),
            "list: state=degraded": lambda: client.list(Item, state="degraded"),
            "list: state=deleted (none)": lambda: client.list(Item, state="deleted"),
            "list: state=running (none)": lambda: client.list(Item, state="running"),
            "list: tag=tenth": lambda: client.list(Item, tags=["tenth"]),
            "list: tag=absent (none)": lambda: client.list(Item, tags=["absent"]),
            "list: tag=tenth, a page deep": lambda: client.list(Item, tags=["tenth"], after=deep),
            "list: tag=rare": lambda: client.list(Item, tags=["rare"]),
            "list: tag=rare, a page deep": lambda: client.list(Item, tags=["rare"], after=deep),
            "list: error=timeout": lambda: client.list(Item, error="timeout"),
            "list: namespace=other": lambda: client.list(Item, namespace="other"),
            "list: namespace=absent (none)": lambda: client.list(Item, namespace="absent"),
        }
        for name, call in pages.items():
            record(name, call)
    return out


def fill_by_sql(dsn: str, count: int, batch: int) -> None:
    """The table the informs of step 1 leave, written by SQL (for `--reads-only`)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO delta_resource
                   (kind, object_id, namespace, object, hash, max_attempts, tags)
               SELECT 'item', 'item-' || i,
                      CASE WHEN (i / %(batch)s) %% 10 = 9 THEN 'other' ELSE 'default' END,
                      convert_to('{"key":"item-' || i || '","value":0}', 'UTF8'),
                      '\\x00', 10,
                      CASE WHEN (i / %(batch)s) %% 10 = 9 THEN '{tenth}'::text[] ELSE '{}' END
               FROM generate_series(0, %(count)s - 1) AS i""",
            {"count": count, "batch": batch},
        )
        conn.execute(
            """INSERT INTO delta_job (kind, namespace, args, resource_id, max_attempts)
               SELECT kind, namespace, '\\x', id, max_attempts FROM delta_resource"""
        )
        conn.execute("VACUUM ANALYZE delta_resource")
        conn.execute("VACUUM ANALYZE delta_job")


def make_troubled(dsn: str, count: int, troubled: int) -> None:
    """Degrade `troubled` resources spread over the table, each with a timeout error."""
    step = max(count // max(troubled, 1), 1)
    ids = [f"item-{i}" for i in range(0, count, step)][:troubled]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """UPDATE delta_resource SET state = 'degraded', attempt = max_attempts,
                   errors = ARRAY[jsonb_build_object(
                       'at', 0, 'attempt', 1, 'error', 'TimeoutError: upstream timeout')]
               WHERE kind = 'item' AND object_id = ANY(%s)""",
            (ids,),
        )


def make_rare(dsn: str, count: int, rare: int) -> None:
    """Tag `rare` resources spread over the table (none of them troubled) `rare`."""
    step = max(count // max(rare, 1), 1)
    ids = [f"item-{i}" for i in range(step // 2, count, step)][:rare]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """UPDATE delta_resource SET tags = tags || '{rare}'::text[]
               WHERE kind = 'item' AND object_id = ANY(%s)""",
            (ids,),
        )
        conn.execute("ANALYZE delta_resource")


def sizes(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT c.relname, pg_relation_size(c.oid) FROM pg_class AS c
               WHERE c.relname LIKE 'delta_resource%' OR c.relname LIKE 'delta_job%'
               ORDER BY 2 DESC"""
        ).fetchall()
    return {name: int(size) for name, size in rows if size}


def ratio(slices: list[dict[str, float]]) -> float:
    return slices[0]["objects_per_s"] / slices[-1]["objects_per_s"]


def bench_informs(
    dsn: str, args: argparse.Namespace
) -> tuple[list[dict[str, float]], float, list[dict[str, float]], float]:
    """Steps 1 and 2: the slices of new and of unchanged informs, and their overall rates."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        print(f"inform_many of {args.count:,} new objects", file=sys.stderr)
        new = inform_slices(conn, args.count, args.batch, args.slice, value=0)
        new_total = args.count / (time.perf_counter() - started)
        started = time.perf_counter()
        print(f"inform_many of {args.count:,} unchanged objects", file=sys.stderr)
        unchanged = inform_slices(conn, args.count, args.batch, args.slice, value=0)
        unchanged_total = args.count / (time.perf_counter() - started)
        row = conn.execute("SELECT count(*), max(generation) FROM delta_resource").fetchone()
        assert row == (args.count, 1), f"unexpected resources: {row}"
    return new, new_total, unchanged, unchanged_total


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--slice", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=7, help="calls per read timing")
    parser.add_argument("--troubled", type=int, default=50)
    parser.add_argument("--tuned", action="store_true", help="the embedded database's settings")
    parser.add_argument("--quick", action="store_true", help="100,000 objects")
    parser.add_argument(
        "--reads-only", action="store_true", help="fill the table by SQL, time step 3 alone"
    )
    parser.add_argument("--out", default="bench-results/million.json")
    args = parser.parse_args()
    if args.quick:
        args.count, args.slice = 100_000, 20_000
    exit_cleanly_on_sigterm()

    # Without --tuned, the call of older trees too (an A/B against a parent commit).
    settings = local_cluster.tuned_settings() if args.tuned else {}
    print(f"settings: {settings or 'PostgreSQL defaults (shared_buffers 128MB)'}")
    cluster = (
        local_cluster.throwaway_cluster(tuned=True)
        if args.tuned
        else local_cluster.throwaway_cluster()
    )
    try:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        new: list[dict[str, float]] = []
        unchanged: list[dict[str, float]] = []
        new_total = unchanged_total = 0.0
        if args.reads_only:
            fill_by_sql(dsn, args.count, args.batch)
        else:
            new, new_total, unchanged, unchanged_total = bench_informs(dsn, args)
        make_troubled(dsn, args.count, args.troubled)
        make_rare(dsn, args.count, args.troubled)
        relations = sizes(dsn)
        print(f"\n{'read (medians of ' + str(args.calls) + ')':<42}")
        reads = read_timings(dsn, args.count, args.calls)
    finally:
        cluster.remove()

    print(f"\n{'':<12}{'first slice':>14}{'last slice':>14}{'first/last':>12}{'overall':>12}")
    for name, slices, total in (("new", new, new_total), ("unchanged", unchanged, unchanged_total)):
        if not slices:
            continue
        first, last = slices[0]["objects_per_s"], slices[-1]["objects_per_s"]
        print(f"{name:<12}{first:>14,.0f}{last:>14,.0f}{ratio(slices):>12.2f}{total:>12,.0f}")
        cpu_first, cpu_last = (s["server_cpu_ms_per_batch"] for s in (slices[0], slices[-1]))
        print(f"{'  server CPU ms/batch':<26}{cpu_first:>6.1f} -> {cpu_last:.1f}")
    print("\nlargest relations: " + ", ".join(
        f"{name} {size / 1024 / 1024:.0f} MB" for name, size in list(relations.items())[:6]
    ))  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        },
        "sizes": {"count": args.count, "batch": args.batch, "slice": args.slice},
        "settings": settings,
        "new": {
            "slices": new,
            "first_over_last": ratio(new) if new else None,
            "overall": new_total,
        },
        "unchanged": {
            "slices": unchanged,
            "first_over_last": ratio(unchanged) if unchanged else None,
            "overall": unchanged_total,
        },
        "relation_bytes": relations,
        "reads_ms": reads,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark what resource events cost the statement that writes work results.

Times `resource_sql.COMPLETE_WORKS` for batches of `--batch` synced results, interleaving
three variants round by round (order rotated) so that machine drift hits them alike:
- `without`: the statement with its events CTE cut out (the code before events);
- `idle`: the statement as shipped, nobody subscribed (one probe of delta_subscriber);
- `subscribed`: the statement as shipped, one live subscription (an insert per result).

Reports the median milliseconds per batch of each and the ratios to `without`.
Usage: python scripts/bench_events.py [--rounds 300] [--batch 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import LiteralString, cast

import msgspec
import psycopg

import delta_actors as delta
from delta_actors.db import migrations, resource_sql
from delta_actors.db.connection import PLAN_CACHE_MODE
from delta_actors.local.cluster import throwaway_cluster
from delta_actors.queue import results as outcome
from delta_actors.queue.completer import work_params

ACTOR = 1


class Thing(delta.Object, kind="thing"):
    key: str

    def id(self) -> str:
        return self.key


def without_events() -> LiteralString:
    """COMPLETE_WORKS with its events CTE removed."""
    text = resource_sql.COMPLETE_WORKS
    start = text.index("-- Events (events.py)")
    end = text.index("followups AS (")
    return cast(LiteralString, text[:start] + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()

    cluster = throwaway_cluster()
    try:
        dsn = cluster.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrations.migrate(conn)
        with delta.Client.connect(dsn) as client:
            client.inform_many([Thing(key=f"t{i}") for i in range(args.batch)])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(PLAN_CACHE_MODE)
            # A lease without a reader: switched live or expired before each batch.
            row = conn.execute(
                "INSERT INTO delta_subscriber (host, pid, cursor_xid, expires_at)"
                " VALUES ('bench', 0, '1', now()) RETURNING id"
            ).fetchone()
            assert row is not None
            lease = row[0]
            ids = [row[0] for row in conn.execute("SELECT id FROM delta_job ORDER BY id")]
            results = [outcome.work_synced(i, 1, 1) for i in ids]
            params = work_params(results, ACTOR)
            variants: dict[str, tuple[LiteralString, bool]] = {
                "without": (without_events(), False),
                "idle": (resource_sql.COMPLETE_WORKS, False),
                "subscribed": (resource_sql.COMPLETE_WORKS, True),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            names = list(variants)
            for round_ in range(args.rounds):
                # Rotated each round, so that no variant always runs first or last.
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    statement, subscribed = variants[name]
                    # Untimed: claims back to running, the lease live or expired.
                    conn.execute(
                        "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = %s,"
                        " finalized_at = NULL WHERE id = ANY(%s)",
                        (ACTOR, ids),
                    )
                    conn.execute(
                        "UPDATE delta_subscriber SET expires_at = now() + CASE WHEN %s"
                        " THEN interval '1 hour' ELSE interval '-1 hour' END WHERE id = %s",
                        (subscribed, lease),
                    )
                    started = time.perf_counter()
                    cur = conn.execute(statement, params, prepare=False)
                    elapsed = time.perf_counter() - started
                    assert len(cur.fetchall()) == len(ids)
                    times[name].append(elapsed * 1000)
                written = conn.execute("SELECT count(*) FROM delta_event").fetchone()
                assert written == (len(ids),), written  # only the subscribed variant wrote
                conn.execute("TRUNCATE delta_event")
    finally:
        cluster.remove()

    base = statistics.median(times["without"])
    print(f"COMPLETE_WORKS, {args.batch} synced results a batch, {args.rounds} rounds")
    print(f"{'variant':<12}{'median ms':>10}{'ratio':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<12}{median:>10.2f}{median / base:>8.3f}")
    print(msgspec.json.encode({n: statistics.median(v) for n, v in times.items()}).decode())


if __name__ == "__main__":
    main()

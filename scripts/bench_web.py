"""Benchmark the web console: how long each page takes with a million resources stored.

On a throwaway cluster, inserts `--resources` resources with SQL (three kinds, two
namespaces; 2 % degraded under five different errors, 0.5 % failed, 1 % deleted, the rest
synced), `--finished` works finished over the last hour (the overview's chart) and a few
thousand plain jobs, runs ANALYZE as autovacuum would, then starts `delta-actors web`
(uvicorn, no access log) and times each page with a real HTTP client: one warm-up
request each, then `--rounds` rounds that visit every page in turn (so that the machine's
noise falls on all pages alike), reporting the median, the slowest and the page's size.
Usage:

    python scripts/bench_web.py [--resources 1000000] [--finished 100000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import migrated_cluster

ROOT = Path(__file__).resolve().parents[1]

SEED_RESOURCES = """
INSERT INTO delta_resource (kind, object_id, namespace, object, hash, generation, state,
                            attempt, max_attempts, errors, tags, created_at, updated_at,
                            synced_at, deletion_requested_at)
SELECT kind, kind || '-' || lpad(g::text, 7, '0'),
       CASE WHEN kind = 'invoice' THEN 'billing' ELSE 'default' END,
       convert_to('{"key":"' || g || '","name":"customer ' || g || '","plan":"pro"}', 'UTF8'),
       decode(md5(g::text), 'hex'), 1 + g %% 3, state,
       CASE WHEN state IN ('degraded', 'failed') THEN 3 ELSE 0 END, 10,
       CASE WHEN state IN ('degraded', 'failed') THEN ARRAY[jsonb_build_object(
           'at', extract(epoch FROM now()) - g %% 3600, 'attempt', 3,
           'error', (ARRAY['TimeoutError: upstream timed out after 30s',
                           'HTTPError: 503 Service Unavailable',
                           'ValueError: card number rejected',
                           'KeyError: ''account''',
                           'PermissionError: token revoked'])[1 + g %% 5],
           'trace', 'Traceback (most recent call last):\n  File "app.py", line 1\n')]
       ELSE '{}'::jsonb[] END,
       ARRAY['eu', 'tier-' || g %% 4],
       now() - interval '30 days', now() - make_interval(secs => g %% 86400),
       CASE WHEN state = 'synced' THEN now() - make_interval(secs => g %% 86400) END,
       CASE WHEN state = 'deleted' THEN now() - interval '1 day' END
FROM (
    SELECT g,
           CASE WHEN g %% 10 < 6 THEN 'customer' WHEN g %% 10 < 9 THEN 'invoice'
                ELSE 'ticket' END AS kind,
           (CASE WHEN g %% 1000 < 20 THEN 'degraded' WHEN g %% 1000 < 25 THEN 'failed'
                 WHEN g %% 1000 < 35 THEN 'deleted' ELSE 'synced' END)::delta_resource_state
               AS state
    FROM generate_series(1, %(n)s) AS g
) AS seed
"""

SEED_FINISHED = """
INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt, created_at,
                       attempted_at, finalized_at, resource_id)
SELECT 'customer', CASE WHEN g %% 3 = 0 THEN 'billing' ELSE 'default' END, '\\x', 10,
       'completed', 1, t, t, t, 1 + g
FROM (SELECT g, now() - make_interval(secs => (g * 3599.0) / %(n)s) AS t
      FROM generate_series(1, %(n)s) AS g) AS s
"""

SEED_JOBS = """
INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt, errors,
                       scheduled_at, finalized_at)
SELECT 'send-email', 'default', convert_to('{"to":"u' || g || '@example.com"}', 'UTF8'), 25,
       (ARRAY['retryable', 'discarded', 'available'])[1 + g %% 3]::delta_job_state,
       CASE WHEN g %% 3 = 2 THEN 0 ELSE 3 END,
       CASE WHEN g %% 3 = 2 THEN '{}'::jsonb[] ELSE ARRAY[jsonb_build_object(
           'at', 1.0, 'attempt', 3, 'error', 'SMTPError: 451 try later', 'trace', '')] END,
       now() + CASE WHEN g %% 3 = 0 THEN interval '1 hour' ELSE interval '0' END,
       CASE WHEN g %% 3 = 1 THEN now() END
FROM generate_series(1, %(n)s) AS g
"""


def pages(resources: int) -> list[tuple[str, str]]:
    """The pages timed; ids from the middle of the seeded range."""
    mid = (resources // 20) * 10  # a customer (g % 10 == 0)
    return [
    ("overview", "/"),
    ("resources, no filter", "/resources"),
    ("resources, one kind", "/resources?kind=customer"),
    ("resources, degraded (with error groups)", "/resources?state=degraded"),
    ("resources, kind + degraded + error",
     "/resources?kind=customer&state=degraded&error=timed+out"),
    ("resources, synced in a namespace", "/resources?state=synced&namespace=billing"),
    ("resources, a tag", "/resources?tag=tier-2"),
    ("resources, a page mid-kind (cursor)",
     f"/resources?kind=invoice&after=invoice%2Finvoice-{mid + 6:07d}"),
    ("resource", f"/resources/customer/customer-{mid:07d}"),
    ("jobs", "/jobs"),
    ("jobs, discarded", "/jobs?state=discarded"),
    ("informers", "/informers"),
]  # fmt: skip


def seed(dsn: str, resources: int, finished: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(SEED_RESOURCES, {"n": resources})
        conn.execute(SEED_FINISHED, {"n": finished})
        conn.execute(SEED_JOBS, {"n": 3000})
        conn.execute("INSERT INTO delta_namespace (name) VALUES ('default'), ('billing')")
        conn.execute("VACUUM ANALYZE delta_resource")
        conn.execute("VACUUM ANALYZE delta_job")
        print(f"seeded {resources:,} resources and {finished:,} finished works in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(
    url: str, rounds: int, visited: list[tuple[str, str]]
) -> list[tuple[str, str, float, float, int]]:
    times: dict[str, list[float]] = {path: [] for _, path in visited}
    sizes: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _, path in visited:  # warm-up: connections, prepared plans, the chart's cache
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)
        for _ in range(rounds):
            for _, path in visited:
                started = time.perf_counter()
                response = client.get(path)
                times[path].append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.status_code)
                sizes[path] = len(response.content)
    return [
        (name, path, statistics.median(times[path]), max(times[path]), sizes[path])
        for name, path in visited
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with migrated_cluster() as dsn:
        seed(dsn, args.resources, args.finished)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "delta_actors", "web", "--dsn", dsn, "--port", str(port),
             "--no-access-log"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/static/console.css", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the console did not start: {proc.stderr}")
                time.sleep(0.1)
            results = measure(url, args.rounds, pages(args.resources))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\n{args.resources:,} resources, {args.finished:,} works finished in the last "
          f"hour; median and slowest of {args.rounds} requests per page\n")  # fmt: skip
    print("| page | URL | median ms | slowest ms | KiB |")
    print("|---|---|---:|---:|---:|")
    for name, path, median, slowest, size in results:
        print(f"| {name} | `{path}` | {median * 1000:.0f} | {slowest * 1000:.0f} | "
              f"{size / 1024:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()

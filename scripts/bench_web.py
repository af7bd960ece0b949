"""Benchmark the web console: how long each page takes with a million resources stored.

On a throwaway cluster, inserts `--resources` resources with SQL (three kinds, two
namespaces; 2 % degraded under five different errors, 0.5 % failed, 1 % deleted, the rest
synced), `--finished` works finished over the last hour (the overview's chart) and a few
thousand plain jobs (`--jobs`), runs ANALYZE as autovacuum would, then starts
`delta-actors web` (uvicorn, no access log) and times each page with a real HTTP client:
one warm-up request each, then `--rounds` rounds that visit every page in turn (so that
the machine's noise falls on all pages alike), reporting the median, the slowest and the
page's size. The pages include the confirmations of bulk actions: a POST with the CSRF
token and a filter but no `confirm=yes`, which counts the matching rows and acts on none.
Usage:

    python scripts/bench_web.py [--resources 1000000] [--finished 100000] [--jobs 3000]
                                [--rounds 9]
"""

from __future__ import annotations

import argparse
import html
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

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


# Confirmation pages: a POST of the filter without confirm=yes only counts the matches.
# Resources: a narrow filter (0.4 %), the degraded (2 %), a broad one (96 %), a kind
# alone (60 %); plain jobs: two states (a third each) and their one kind.
CONFIRMATIONS: list[tuple[str, str, dict[str, str]]] = [
    (
        "confirm retry, kind + degraded + error",
        "/actions/retry",
        {"kind": "customer", "state": "degraded", "error": "timed out"},
    ),
    ("confirm retry, degraded", "/actions/retry", {"state": "degraded"}),
    ("confirm retry, synced", "/actions/retry", {"state": "synced"}),
    ("confirm invalidate, one kind", "/actions/invalidate", {"kind": "customer"}),
    ("confirm retry jobs, discarded", "/actions/retry-jobs", {"state": "discarded"}),
    ("confirm cancel jobs, available", "/actions/cancel-jobs", {"state": "available"}),
    ("confirm cancel jobs, one kind", "/actions/cancel-jobs", {"kind": "send-email"}),
]


def seed(dsn: str, resources: int, finished: int, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(SEED_RESOURCES, {"n": resources})
        conn.execute(SEED_FINISHED, {"n": finished})
        conn.execute(SEED_JOBS, {"n": jobs})
        conn.execute("INSERT INTO delta_namespace (name) VALUES ('default'), ('billing')")
        conn.execute("VACUUM ANALYZE delta_resource")
        conn.execute("VACUUM ANALYZE delta_job")
        print(f"seeded {resources:,} resources, {finished:,} finished works and {jobs:,} "
              f"plain jobs in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(
    url: str,
    rounds: int,
    visited: list[tuple[str, str]],
    confirmations: list[tuple[str, str, dict[str, str]]],
) -> tuple[list[tuple[str, str, float, float, int]], dict[str, str]]:
    """Each page's median, slowest and size, and what each confirmation said."""
    requests = [(name, path, None) for name, path in visited]
    requests += [(name, path, form) for name, path, form in confirmations]
    times: dict[str, list[float]] = {name: [] for name, _, _ in requests}
    sizes: dict[str, int] = {}
    said: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as client:

        def send(path: str, form: dict[str, str] | None) -> httpx.Response:
            if form is None:
                response = client.get(path)
            else:  # the CSRF cookie was set by the warm-up's first GET
                response = client.post(path, data={**form, "csrf": client.cookies["delta_csrf"]})
                assert "confirm-count" in response.text, (path, form, response.text)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response

        for _, path, form in requests:  # warm-up: connections, prepared plans, the chart
            send(path, form)
        for _ in range(rounds):
            for name, path, form in requests:
                started = time.perf_counter()
                response = send(path, form)
                times[name].append(time.perf_counter() - started)
                sizes[name] = len(response.content)
                if form is not None:
                    said[name] = confirmation_of(response.text)
    timed = [
        (name, path if form is None else f"POST {path} {urlencode(form)}",
         statistics.median(times[name]), max(times[name]), sizes[name])
        for name, path, form in requests
    ]  # fmt: skip
    return timed, said


def confirmation_of(page: str) -> str:
    """The sentence of a confirmation page that says how many rows it would touch."""
    found = re.search(r'<p id="confirm-count">(.*?)</p>', page, re.S)
    assert found, page
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1)))


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages (the figures move with them)."""
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=3000, help="plain jobs (a third each of "
                        "retryable, discarded, available)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    load_before = load_average()
    with migrated_cluster() as dsn:
        seed(dsn, args.resources, args.finished, args.jobs)
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
            results, said = measure(url, args.rounds, pages(args.resources), CONFIRMATIONS)
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"\n{args.resources:,} resources, {args.finished:,} works finished in the last "
        f"hour, {args.jobs:,} plain jobs; median and slowest of {args.rounds} requests "
        f"per page; load average before and after: {load_before} / {load_average()}\n"
    )
    print("| page | URL | median ms | slowest ms | KiB |")
    print("|---|---|---:|---:|---:|")
    for name, path, median, slowest, size in results:
        print(f"| {name} | `{path}` | {median * 1000:.0f} | {slowest * 1000:.0f} | "
              f"{size / 1024:.0f} |")  # fmt: skip
    print()
    for name, sentence in said.items():
        print(f"- {name}: {sentence}")


if __name__ == "__main__":
    main()

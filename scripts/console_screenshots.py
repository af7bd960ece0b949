"""Make the screenshots of docs/console/: a seeded database, the console, headless Chromium.

On a throwaway cluster, writes with SQL what a small deployment would have (customers,
invoices and tickets in three states; failed and degraded ones under a few errors with
their tracebacks; an hour of finished works; a leader, its actors, an informer, a
periodic job, some plain jobs), starts `delta-actors web`, and screenshots each page with
Debian's chromium driven by Playwright. Usage:

    python scripts/console_screenshots.py [--out docs/console] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import migrated_cluster

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

TRACE = (
    "Traceback (most recent call last):\n"
    '  File "billing/sync.py", line 42, in work\n'
    "    account = await api.get_customer(resource.object.key)\n"
    '  File "billing/api.py", line 88, in get_customer\n'
    "    raise {error}\n"
    "{error}"
)
ERRORS = [
    "TimeoutError: billing API timed out after 30s",
    "HTTPError: 503 Service Unavailable",
    "ValueError: card number rejected",
]

SEED = """
INSERT INTO delta_resource (kind, object_id, namespace, object, hash, generation, state,
                            attempt, max_attempts, errors, tags, created_at, updated_at,
                            attempted_at, synced_at)
SELECT kind, kind || '-' || lpad(g::text, 4, '0'), namespace,
       convert_to(json_build_object('key', g, 'name', 'Customer ' || g,
                                    'plan', (ARRAY['free', 'pro', 'team'])[1 + g %% 3],
                                    'email', 'c' || g || '@example.com')::text, 'UTF8'),
       decode(md5(g::text), 'hex'), 1 + g %% 4, state,
       CASE WHEN state IN ('degraded', 'failed') THEN 1 + g %% 10 ELSE 0 END, 10,
       CASE WHEN state IN ('degraded', 'failed') THEN ARRAY(
           SELECT jsonb_build_object(
               'at', extract(epoch FROM now()) - 600 * (4 - a) - g, 'attempt', a,
               'error', (%(errors)s::text[])[1 + (g / 30) %% 3],
               'trace', replace(%(trace)s, '{error}', (%(errors)s::text[])[1 + (g / 30) %% 3]))
           FROM generate_series(1, least(1 + g %% 10, 3)) AS a)
       ELSE '{}'::jsonb[] END,
       ARRAY['eu'], now() - interval '3 days', now() - make_interval(secs => 7 * g),
       now() - make_interval(secs => 7 * g),
       CASE WHEN state = 'synced' THEN now() - make_interval(secs => 7 * g) END
FROM (
    SELECT g, kind, namespace,
           (CASE WHEN kind = 'customer' AND g %% 10 IN (4, 1) THEN 'degraded'
                 WHEN kind = 'customer' AND g %% 10 = 7 THEN 'failed'
                 WHEN kind = 'ticket' AND g %% 4 = 0 THEN 'scheduled'
                 ELSE 'synced' END)::delta_resource_state AS state
    FROM generate_series(1, 360) AS g,
         LATERAL (SELECT CASE WHEN g %% 3 = 0 THEN 'invoice' WHEN g %% 3 = 1 THEN 'customer'
                              ELSE 'ticket' END AS kind) AS k,
         LATERAL (SELECT CASE WHEN k.kind = 'invoice' THEN 'billing' ELSE 'default' END
                  AS namespace) AS n
) AS seed
"""

FINISHED = """
INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt, created_at,
                       attempted_at, finalized_at)
SELECT 'customer', ns, '\\x', 10, 'completed', 1, t, t, t
FROM generate_series(0, 59) AS m,
     LATERAL (VALUES ('default', 40 + round(30 * sin(m / 6.0))),
                     ('billing', 15 + round(10 * cos(m / 9.0)))) AS v(ns, n),
     LATERAL (SELECT now() - make_interval(mins => m) - make_interval(secs => i % 55) AS t
              FROM generate_series(1, v.n::int) AS i) AS s
"""

CLUSTER = """
INSERT INTO delta_actor (host, pid, namespace, role, started_at, heartbeat_at, health)
VALUES ('app-1', 4121, 'default', 'worker', now() - interval '2 hours', now(), '[]'),
       ('app-1', 4122, 'billing', 'worker', now() - interval '2 hours', now(), '[]'),
       ('app-1', 4123, 'leader', 'leader', now() - interval '2 hours', now(), '[]'),
       ('app-2', 3310, 'default', 'worker', now() - interval '40 minutes', now(), '[]'),
       ('app-2', 3312, 'leader', 'leader', now() - interval '40 minutes', now(), '[]');
INSERT INTO delta_leader (name, actor_id, host, pid, term, elected_at, expires_at)
SELECT 'default', id, host, pid, 7, now() - interval '2 hours', now() + interval '12 seconds'
FROM delta_actor WHERE pid = 4123;
INSERT INTO delta_informer (kind, cursor, next_run_at, last_started_at, last_finished_at,
                            last_success_at, runs, failures, objects)
VALUES ('customer', now() - interval '5 minutes', now() + interval '52 minutes',
        now() - interval '8 minutes', now() - interval '8 minutes',
        now() - interval '8 minutes', 46, 1, 12040);
INSERT INTO delta_informer (kind, next_run_at, last_started_at, last_finished_at,
                            last_error, last_error_at, last_success_at, runs, failures)
VALUES ('invoice', now() + interval '3 minutes', now() - interval '7 minutes',
        now() - interval '7 minutes', 'Traceback ...\nHTTPError: 429 Too Many Requests',
        now() - interval '7 minutes', now() - interval '1 hour', 20, 3);
INSERT INTO delta_periodic (name, kind, namespace, schedule, next_run_at, last_run_at,
                            last_job_id, runs)
VALUES ('nightly-report', 'send-report', 'default', 'cron 0 2 * * *',
        date_trunc('day', now()) + interval '1 day 2 hours',
        date_trunc('day', now()) + interval '2 hours', 1, 31);
INSERT INTO delta_job (kind, namespace, args, max_attempts, state, attempt, errors,
                       scheduled_at, finalized_at, attempted_at)
SELECT 'send-email', 'default', convert_to('{"to":"c' || g || '@example.com"}', 'UTF8'), 25,
       (ARRAY['retryable', 'discarded', 'completed'])[1 + g % 3]::delta_job_state,
       CASE WHEN g % 3 = 2 THEN 1 ELSE 3 END,
       CASE WHEN g % 3 = 2 THEN '{}'::jsonb[] ELSE ARRAY[jsonb_build_object(
           'at', 1.0, 'attempt', 3, 'error', 'SMTPError: 451 try again later', 'trace', '')]
       END,
       now() + CASE WHEN g % 3 = 0 THEN interval '4 minutes' ELSE interval '0' END,
       CASE WHEN g % 3 > 0 THEN now() - make_interval(secs => g) END,
       now() - make_interval(secs => g)
FROM generate_series(1, 30) AS g;
INSERT INTO delta_namespace (name, paused_at) VALUES ('billing', NULL);
"""

SHOTS = [
    ("overview", "/"),
    ("resources-degraded", "/resources?kind=customer&state=degraded"),
    ("resource", "/resources/customer/customer-0034"),
    ("jobs", "/jobs"),
    ("informers", "/informers"),
]


def seed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED, {"errors": ERRORS, "trace": TRACE})
        conn.execute(FINISHED)
        conn.execute(CLUSTER)
        conn.execute("ANALYZE")


def fresh(dsn: str) -> None:
    """Heartbeats and the lease as a running cluster keeps them (seeding took a while)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE delta_actor SET heartbeat_at = now() - make_interval(secs => pid % 3 * 0.4)"
        )
        conn.execute("UPDATE delta_leader SET expires_at = now() + interval '5 minutes'")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with migrated_cluster() as dsn:
        seed(dsn)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "delta_actors", "web", "--dsn", dsn, "--port", str(port),
             "--no-access-log"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
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
                    raise SystemExit("the console did not start")
                time.sleep(0.1)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                fresh(dsn)  # after the browser's start, which takes a while on a busy box
                for name, path in SHOTS:
                    page.goto(url + path)
                    if name == "resource":
                        page.locator("#errors summary").last.click()
                    page.screenshot(path=args.out / f"{name}.png", full_page=True)
                    print("wrote", args.out / f"{name}.png")
                page.goto(url + SHOTS[1][1])
                page.locator("button.retry-group").first.click()
                page.wait_for_selector("#confirm")
                page.screenshot(path=args.out / "confirm-retry.png", full_page=True)
                print("wrote", args.out / "confirm-retry.png")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()

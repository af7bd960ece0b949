"""The web console end to end: `delta-actors web` and `supervise` processes, a real
headless Chromium (Debian's, driven by Playwright), a seeded database.

A screenshot of each page goes to the test's output folder (`screenshots/` in its
tmp_path); scripts/console_screenshots.py makes those of docs/console/.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright

import delta_actors as delta
from tests.e2e.conftest import ROOT, terminate
from tests.e2e.console_app import BROKEN_TABLE, Customer, Invoice, app
from tests.waiting import wait_until

CHROMIUM = Path(os.environ.get("DELTA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ACTORS = 3  # default, billing, the leader candidate
TIMEOUT = "UpstreamTimeout: billing API timed out after 30s"
REJECTED = "ValueError: card number rejected"


FIRST_RUNS = re.compile(r"^[1-9][0-9]* / 0$")  # the informer ran, without a failure


def finished(chart: Locator) -> int:
    """The works a namespace's chart shows finished over the hour (its bars' titles)."""
    return sum(int(n) for n in chart.locator("title").all_text_contents())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def console_url(e2e_dsn: str, tmp_path: Path) -> Iterator[str]:
    """A `delta-actors web` process on a free loopback port."""
    port = free_port()
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "delta_actors", "web", "--dsn", e2e_dsn, "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "web.log").read_text()
        try:
            return httpx.get(url + "/", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 30, "the console to answer")
        yield url
    finally:
        code = terminate(proc)
        log.close()
        text = (tmp_path / "web.log").read_text()
        assert code == 0, text
    # Streams that ended with their tab gave their subscription up whole, not cut off.
    assert "query cancellation interrupted" not in text, text
    assert "Traceback" not in text, text


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 1000


def states(dsn: str, kind: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state::text, count(*) FROM delta_resource WHERE kind = %s GROUP BY 1",
            (kind,),
        ).fetchall()
    return {state: int(n) for state, n in rows}


def claimed_since(dsn: str, moment: float) -> bool:
    """Whether the billing worker finished a claim round trip that started after `moment`
    (epoch seconds, the database's): its claims' progress, as of its last heartbeat."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT bool_and(extract(epoch FROM a.heartbeat_at) "
            "                - (h->>'since_progress')::float8 > %s) "
            "FROM delta_actor AS a, jsonb_array_elements(a.health) AS h "
            "WHERE a.namespace = 'billing' AND a.role = 'worker' AND h->>'name' = 'claims'",
            (moment,),
        ).fetchone()
    return bool(row and row[0])


def test_the_console_shows_acts_and_updates_live(supervise, e2e_dsn, console_url, browser,
                                                 tmp_path):  # fmt: skip
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute(BROKEN_TABLE)
        conn.cursor().executemany(
            "INSERT INTO e2e_console_broken (key, error) VALUES (%s, %s)",
            [(f"cus-{i:02d}", TIMEOUT) for i in range(6)]
            + [(f"cus-{i:02d}", REJECTED) for i in range(6, 8)],
        )
    supervise(app="tests.e2e.console_app:app").wait_started(ACTORS)
    with delta.Client.connect(e2e_dsn, app=app) as client:
        client.inform_many([Customer(key=f"cus-{i:02d}", name=f"n{i}") for i in range(20)])
        client.inform_many([Invoice(key=f"inv-{i}") for i in range(5)])
    wait_until(lambda: states(e2e_dsn, "customer") == {"synced": 12, "degraded": 8}, 30, "seed")
    wait_until(lambda: states(e2e_dsn, "invoice") == {"synced": 5}, 30, "invoices")

    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    # The overview: counts of the seeded database, the namespaces, the leader.
    page.goto(console_url + "/")
    customers = page.locator('#resource-counts tr[data-kind="customer"]')
    expect(customers.locator(".total")).to_have_text("20")
    expect(customers.locator('[data-state="degraded"] .count')).to_have_text("8")
    expect(customers.locator('[data-state="synced"] .count')).to_have_text("12")
    expect(page.locator('#resource-counts tr[data-kind="invoice"] .total')).to_have_text("5")
    expect(page.locator('#namespaces tr[data-namespace="billing"] .ns-state')).to_have_text(
        "claiming"
    )
    expect(page.locator("#leader")).to_contain_text("term")
    expect(page.locator("#actors tbody tr")).to_have_count(ACTORS)
    billing_chart = page.locator('#namespaces tr[data-namespace="billing"] svg.chart rect')
    expect(billing_chart).to_have_count(60)  # a bar a minute, the last hour
    wait_until(lambda: finished(billing_chart) >= 5, 20, "the invoices' works in the chart")
    expect(page.locator('#informers tr[data-kind="account"] .runs')).to_have_text(FIRST_RUNS)
    shoot(page, tmp_path, "overview")

    # Degraded resources, grouped by error; the timeout group is retried after the fix.
    page.click('#resource-counts tr[data-kind="customer"] [data-state="degraded"]')
    groups = page.locator("#error-groups tr.group")
    expect(groups).to_have_count(2)
    timeouts = page.locator(f'#error-groups tr.group[data-error$="{TIMEOUT}"]')
    expect(timeouts.locator(".count")).to_have_text("6")
    expect(page.locator(f'#error-groups tr.group[data-error$="{REJECTED}"] .count')).to_have_text(
        "2"
    )
    shoot(page, tmp_path, "resources-degraded")
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE e2e_console_broken SET error = NULL, held = true WHERE error = %s",
            (TIMEOUT,),
        )
    timeouts.locator("button.retry-group").click()
    expect(page.locator("#confirm-count strong")).to_have_text("6")
    shoot(page, tmp_path, "confirm-retry")
    page.click("#confirm")
    expect(page.locator(".done")).to_have_text("retried 6")
    page.evaluate("window.notReloaded = true")
    rows = page.locator("#resources tbody tr[data-id]")
    expect(rows).to_have_count(6)
    # The works are held until the page has shown them unfinished; then they finish.
    assert page.locator("#resources td.state-synced").count() == 0
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute("UPDATE e2e_console_broken SET held = false")
    expect(page.locator("#resources td.state-synced")).to_have_count(6, timeout=30_000)
    # The same document throughout: the rows changed in place, by the live refresh.
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert int(page.evaluate("document.body.dataset.refreshes || '0'")) >= 1
    expect(page.locator("#live-state.on")).to_have_count(1)  # only the live parts changed
    shoot(page, tmp_path, "resources-after-retry")

    # One resource: its error history with the traceback.
    page.goto(console_url + "/resources/customer/cus-06")
    expect(page.locator("#state")).to_have_text("degraded")
    expect(page.locator("#errors")).to_contain_text(f"permanent error: {REJECTED}")
    page.locator("#errors summary").first.click()
    expect(page.locator("#errors pre.trace").first).to_contain_text("Traceback")
    expect(page.locator("#object")).to_contain_text('"name": "n6"')
    shoot(page, tmp_path, "resource")
    # Its upstream fixed, a retry from its page: the page follows the work, live.
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute("UPDATE e2e_console_broken SET error = NULL, held = true WHERE key = 'cus-06'")
    page.click("button.action-retry")
    expect(page.locator(".done")).to_have_text("retried 1")
    page.evaluate("window.notReloaded = true")
    assert page.locator("#state").inner_text() in {"scheduled", "running"}  # held
    with psycopg.connect(e2e_dsn, autocommit=True) as conn:
        conn.execute("UPDATE e2e_console_broken SET held = false")
    expect(page.locator("#state")).to_have_text("synced", timeout=30_000)
    assert page.evaluate("window.notReloaded === true"), "the resource page was reloaded"

    # Pause billing: new invoices stay queued while its worker goes on claiming nothing.
    page.goto(console_url + "/")
    page.click('#namespaces tr[data-namespace="billing"] button[value="pause"]')
    expect(page.locator(".done")).to_have_text("paused billing")
    billing = page.locator('#namespaces tr[data-namespace="billing"]')
    expect(billing.locator(".ns-state")).to_contain_text("paused")
    with delta.Client.connect(e2e_dsn, app=app) as client:
        client.inform_many([Invoice(key=f"inv-new-{i}") for i in range(3)])
        with psycopg.connect(e2e_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
        informed = float(row[0]) if row else 0.0
    # A claim that ended more than a poll interval after the informs began after them.
    wait_until(lambda: claimed_since(e2e_dsn, informed + 1.5), 20, "a claim after the informs")
    assert states(e2e_dsn, "invoice") == {"synced": 5, "scheduled": 3}
    expect(billing.locator(".available")).to_have_text("3", timeout=15_000)  # live
    shoot(page, tmp_path, "overview-paused")
    page.click('#namespaces tr[data-namespace="billing"] button[value="resume"]')
    expect(page.locator(".done")).to_have_text("resumed billing")
    wait_until(lambda: states(e2e_dsn, "invoice") == {"synced": 8}, 30, "invoices after resume")

    # The other pages render with the seeded data.
    page.goto(console_url + "/jobs")
    expect(page.locator("h1")).to_have_text("Jobs")
    shoot(page, tmp_path, "jobs")
    page.goto(console_url + "/informers")
    expect(page.locator("h1")).to_have_text("Informers")
    shoot(page, tmp_path, "informers")

    # Run an informer now: its run count goes up on the page, live.
    runs = page.locator('#informers tr[data-kind="account"] .runs')
    expect(runs).to_have_text(FIRST_RUNS)
    before = int(runs.inner_text().split(" / ")[0])
    page.locator('#informers tr[data-kind="account"] button', has_text="Run now").click()
    expect(page.locator(".done")).to_have_text("asked for a run of account")
    expect(runs).to_have_text(f"{before + 1} / 0", timeout=20_000)
    page.close()
    # Everything the pages loaded came from the console: nothing from another site.
    assert requested
    foreign = [url for url in requested if not url.startswith((console_url + "/", "data:"))]
    assert not foreign, foreign


def test_closing_the_tab_ends_its_live_stream(supervise, e2e_dsn, console_url, browser):
    """The tab's subscription (a delta_subscriber lease) is given up when the tab closes."""

    def subscribers() -> int:
        with psycopg.connect(e2e_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM delta_subscriber").fetchone()
        return int(row[0]) if row else -1

    page = browser.new_page()
    page.goto(console_url + "/")
    expect(page.locator("#live-state.on")).to_have_count(1)
    wait_until(lambda: subscribers() == 1, 10, "the tab's subscription")
    page.close()
    wait_until(lambda: subscribers() == 0, 15, "the subscription to end with the tab")

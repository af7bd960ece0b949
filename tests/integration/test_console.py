"""The console over real HTTP (uvicorn) on a real PostgreSQL: pages, safety, actions, live."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg import sql

import delta_actors as delta
from tests.e2e.conftest import ROOT
from tests.roles import PASSWORD
from tests.waiting import wait_until

WEB = [sys.executable, "-m", "delta_actors", "web"]
ANYWHERE = "0.0.0.0"  # noqa: S104 (the binding the console refuses without a token)
SCRIPT_ID = "<script>alert('x')</script>"


class Customer(delta.Object, kind="customer"):
    key: str
    note: str = ""

    def id(self) -> str:
        return self.key


def seed(dsn: str, n: int = 5) -> None:
    with delta.Client.connect(dsn) as client:
        client.inform_many([Customer(key=f"c{i}") for i in range(n)], tags=["eu"])
        client.inform(Customer(key=SCRIPT_ID, note="<img src=x onerror=alert(1)>"))


def degrade(conn: psycopg.Connection, ids: list[str], error: str) -> None:
    """Make resources degraded with `error` as their newest error, as a work would."""
    conn.execute(
        "UPDATE delta_resource SET state = 'degraded', attempt = 3, errors = ARRAY["
        "jsonb_build_object('at', 1.0, 'attempt', 3, 'error', %s::text, 'trace', "
        "'Traceback (most recent call last):\n  boom')] WHERE object_id = ANY(%s)",
        (error, ids),
    )


def csrf_of(client: httpx.Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match
    return match.group(1)


def states(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT object_id, state::text FROM delta_resource").fetchall())


def test_overview_counts_every_resource_by_kind_and_state(serve_console, dsn):
    seed(dsn)
    served = serve_console()
    page = httpx.get(served.url + "/")
    assert page.status_code == 200
    row = re.search(r'<tr data-kind="customer">.*?</tr>', page.text, re.S)
    assert row, page.text
    assert '<td class="total">6</td>' in row.group(0)
    assert 'data-state="scheduled"' in row.group(0)


def test_an_object_id_holding_a_script_renders_as_text(serve_console, dsn):
    seed(dsn)
    served = serve_console()
    listing = httpx.get(served.url + "/resources?kind=customer").text
    one = httpx.get(served.url + "/resources/customer/" + httpx.URL(path=SCRIPT_ID).path)
    assert one.status_code == 200
    for html in (listing, one.text):
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(" in html
    assert "<img src=x" not in one.text and "&lt;img src=x onerror=alert(1)&gt;" in one.text


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(serve_console, dsn, conn):
    seed(dsn)
    degrade(conn, ["c1"], "TimeoutError: upstream timed out")
    served = serve_console()
    form = {"kind": "customer", "state": "degraded", "confirm": "yes"}
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/resources")
        assert browser.get("/actions/retry", params=form).status_code == 405  # POST only
        assert browser.post("/actions/retry", data=form).status_code == 403
        assert browser.post("/actions/retry", data={**form, "csrf": "forged"}).status_code == 403
        assert states(conn)["c1"] == "degraded"
        # Another browser's token (its own cookie) does not do either.
        with httpx.Client(base_url=served.url) as other:
            assert other.post("/actions/retry", data={**form, "csrf": csrf}).status_code == 403
        done = browser.post("/actions/retry", data={**form, "csrf": csrf})
        assert done.status_code == 303
        assert "retried+1" in done.headers["location"]
    assert states(conn)["c1"] == "scheduled"


def test_a_bulk_action_first_shows_how_many_rows_it_will_touch(serve_console, dsn, conn):
    seed(dsn, 10)
    degrade(conn, ["c1", "c2", "c3"], "TimeoutError: upstream timed out")
    degrade(conn, ["c4"], "ValueError: bad card")
    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/resources?state=degraded")
        groups = browser.get("/resources?state=degraded").text
        assert re.search(r"upstream timed out</code></a></td>\s*<td class=\"count\">3<", groups)
        assert re.search(r"bad card</code></a></td>\s*<td class=\"count\">1<", groups)
        form = {"csrf": csrf, "state": "degraded", "error": "timed out"}
        confirm = browser.post("/actions/retry", data=form)
        assert confirm.status_code == 200
        assert "<strong>3</strong> resources" in confirm.text
        assert states(conn)["c1"] == "degraded"  # nothing yet
        done = browser.post("/actions/retry", data={**form, "confirm": "yes"})
        assert done.status_code == 303
    after = states(conn)
    assert [after[k] for k in ("c1", "c2", "c3", "c4")] == ["scheduled"] * 3 + ["degraded"]


def test_delete_without_a_filter_is_refused_naming_the_fix(serve_console, dsn, conn):
    seed(dsn)
    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/")
        refused = browser.post("/actions/delete", data={"csrf": csrf, "confirm": "yes"})
    assert refused.status_code == 400
    assert "choose a state, tag, error, namespace or id" in refused.text
    assert "deleting" not in states(conn).values()


def test_read_only_hides_and_refuses_every_action(serve_console, dsn, conn):
    seed(dsn)
    degrade(conn, ["c1"], "TimeoutError: upstream timed out")
    served = serve_console(read_only=True)
    with httpx.Client(base_url=served.url) as browser:
        for path in ("/", "/resources?state=degraded", "/resources/customer/c1", "/jobs"):
            page = browser.get(path)
            assert page.status_code == 200
            assert 'method="post"' not in page.text, path
        csrf = csrf_of(browser, "/")
        for action in ("retry", "invalidate", "delete", "retry-jobs", "cancel-jobs", "pause",
                       "resume", "run-informer"):  # fmt: skip
            data = {"csrf": csrf, "kind": "customer", "id": "c1", "namespace": "default",
                    "confirm": "yes"}  # fmt: skip
            refused = browser.post(f"/actions/{action}", data=data)
            assert refused.status_code == 403, action
            assert "read-only" in refused.text
    assert states(conn)["c1"] == "degraded"
    assert conn.execute("SELECT count(*) FROM delta_namespace").fetchone() == (0,)


def test_with_a_token_every_request_needs_it(serve_console, dsn):
    token = "s3cret-token-of-the-console"  # noqa: S105 (the test's own token)
    served = serve_console(token=token)
    assert httpx.get(served.url + "/").status_code == 401
    assert httpx.get(served.url + "/live").status_code == 401
    assert httpx.get(served.url + "/?token=wrong-token-wrong").status_code == 401
    bearer = httpx.get(served.url + "/", headers={"authorization": f"Bearer {token}"})
    assert bearer.status_code == 200
    with httpx.Client(base_url=served.url) as browser:
        login = browser.get(f"/resources?kind=customer&token={token}")
        assert login.status_code == 303
        assert login.headers["location"] == "/resources?kind=customer"  # the token is dropped
        assert browser.get("/resources?kind=customer").status_code == 200


def test_a_dsn_password_reaches_no_page_and_no_log(serve_console, dsn, caplog):
    # The test server trusts local connections: the password is carried, never checked.
    secret_dsn = psycopg.conninfo.make_conninfo(dsn, password="pw-never-shown-42")  # noqa: S106
    caplog.set_level(logging.DEBUG)
    served = serve_console(secret_dsn)
    pages = [httpx.get(served.url + p).text for p in ("/", "/resources", "/jobs", "/informers")]
    pages.append(httpx.get(served.url + "/resources?state=nope").text)
    assert all("pw-never-shown-42" not in page for page in pages)
    assert "pw-never-shown-42" not in caplog.text


def test_a_bad_filter_gets_a_page_naming_the_valid_values(serve_console, dsn):
    served = serve_console()
    page = httpx.get(served.url + "/resources?state=syncd")
    assert page.status_code == 400
    assert "unknown state &#39;syncd&#39; (valid: scheduled, running, synced" in page.text
    assert httpx.get(served.url + "/resources/customer/nobody").status_code == 404


def test_pages_follow_the_keyset_cursor(serve_console, dsn):
    seed(dsn, 60)
    served = serve_console()
    first = httpx.get(served.url + "/resources?kind=customer").text
    link = re.search(r'id="next-page" href="([^"]+)"', first)
    assert link
    second = httpx.get(served.url + link.group(1).replace("&amp;", "&")).text
    ids = re.findall(r'<tr data-id="([^"]+)">', first) + re.findall(
        r'<tr data-id="([^"]+)">', second
    )
    assert len(ids) == 61 and len(set(ids)) == 61


def test_the_live_stream_gives_its_subscription_up_when_the_tab_goes(serve_console, dsn, conn):
    served = serve_console()

    def subscribers() -> int:
        row = conn.execute("SELECT count(*) FROM delta_subscriber").fetchone()
        return int(row[0]) if row else -1

    with (
        httpx.Client(base_url=served.url, timeout=10) as browser,
        browser.stream("GET", "/live?kind=customer") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        while next(lines) != "event: ready":
            pass
        assert subscribers() == 1
        seed(dsn, 1)
        with delta.Client.connect(dsn) as client:
            client.delete(Customer, "c0")  # a deletion is an event
        deadline = time.monotonic() + 10  # ticks keep the stream alive: bound the wait
        while next(lines) != "event: change":
            assert time.monotonic() < deadline, "no change event for the deletion"
    wait_until(lambda: subscribers() == 0, 10, "the stream's subscription to end")


def test_binding_beyond_loopback_without_a_token_refuses_to_start(dsn):
    env = {k: v for k, v in os.environ.items() if k != "DELTA_WEB_TOKEN"}
    result = subprocess.run(
        [*WEB, "--host", ANYWHERE, "--port", "0", "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "without a token: pass --token or set DELTA_WEB_TOKEN" in result.stderr


@pytest.mark.parametrize("token", ["short"])
def test_a_short_token_is_refused(dsn, token):
    result = subprocess.run(
        [*WEB, "--host", ANYWHERE, "--port", "0", "--dsn", dsn, "--token", token],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr


def test_mounted_in_another_app_its_links_and_redirects_keep_the_mount(serve_console, dsn,
                                                                       conn):  # fmt: skip
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from delta_actors.web import create_app

    seed(dsn)
    degrade(conn, ["c1"], "TimeoutError: upstream timed out")
    console = create_app(dsn)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await console.state.console.close()  # as docs/console.md tells a host app to

    host = Starlette(routes=[Mount("/delta", app=console)], lifespan=lifespan)
    served = serve_console(app=host)
    with httpx.Client(base_url=served.url) as browser:
        page = browser.get("/delta/resources?state=degraded")
        assert page.status_code == 200
        assert 'href="/delta/resources/customer/c1"' in page.text
        assert 'action="/delta/actions/retry"' in page.text
        csrf = csrf_of(browser, "/delta/")
        done = browser.post(
            "/delta/actions/retry",
            data={"csrf": csrf, "kind": "customer", "id": "c1", "confirm": "yes"},
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith("/delta/resources/customer/c1")
        assert browser.get("/delta/static/console.js").status_code == 200
    assert states(conn)["c1"] == "scheduled"


def test_a_dsn_that_does_not_connect_stops_the_start_in_one_redacted_line():
    dsn = "postgresql://someone:pw-never-printed-7@127.0.0.1:1/nothing"
    result = subprocess.run(
        [*WEB, "--port", "0", "--dsn", dsn],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: open the console: cannot use PostgreSQL at ")
    assert "pw-never-printed-7" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def end_console_connections(conn: psycopg.Connection) -> None:
    """Terminate every connection of the console's pool, as a failover or an operator would,
    and wait until PostgreSQL has ended them.

    First wait until the pool opens none: a connection whose backend ended while the pool
    was still setting it up joins the pool after the pool's check of its idle ones (the
    check that the first broken connection starts), and then fails one request more."""

    def settled() -> bool:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state IS DISTINCT FROM 'idle') FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'delta-web'"
        ).fetchone()
        return row == (0,)

    wait_until(settled, 10, "the console's pool to settle")
    rows = conn.execute(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'delta-web'"
    ).fetchall()
    assert rows, "the console held no connection to end"
    pids = [pid for pid, _ in rows]

    def ended() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()
        return row == (0,)

    wait_until(ended, 10, "the console's connections to end")


def test_connections_ended_under_the_console_get_a_503_page_then_it_recovers(
    serve_console, dsn, conn, caplog
):
    """Each page and action whose connection PostgreSQL ended answers with an error page
    (503, the DatabaseError's redacted message, logged, no traceback); the next request
    gets a new connection and works."""
    seed(dsn)
    degrade(conn, ["c1"], "TimeoutError: upstream timed out")
    secret_dsn = psycopg.conninfo.make_conninfo(dsn, password="pw-never-shown-42")  # noqa: S106
    caplog.set_level(logging.INFO)
    served = serve_console(secret_dsn)
    retry = {"kind": "customer", "id": "c1", "confirm": "yes"}
    requests = [
        ("GET", "/", None, 200),
        ("GET", "/resources?state=degraded", None, 200),
        ("GET", "/resources/customer/c1", None, 200),
        ("GET", "/jobs", None, 200),
        ("GET", "/informers", None, 200),
        ("POST", "/actions/retry", {"kind": "customer", "state": "degraded"}, 200),
        ("POST", "/actions/retry-jobs", {"state": "discarded", "confirm": "yes"}, 303),
        ("POST", "/actions/retry", retry, 303),
    ]
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/")
        for method, path, form, status in requests:
            data = {**form, "csrf": csrf} if form is not None else None
            end_console_connections(conn)
            failed = browser.request(method, path, data=data)
            assert failed.status_code == 503, (path, failed.text)
            assert "<h1>database error</h1>" in failed.text, path
            assert "cannot use PostgreSQL" in failed.text, path
            assert "pw-never-shown-42" not in failed.text
            assert states(conn)["c1"] == "degraded"  # the failed action changed nothing
            assert browser.request(method, path, data=data).status_code == status, path
    assert states(conn)["c1"] == "scheduled"
    failures = [r for r in caplog.records if getattr(r, "event", None) == "web.request_failed"]
    assert len(failures) == len(requests)
    assert "pw-never-shown-42" not in caplog.text
    assert "Traceback" not in caplog.text


def test_a_privilege_taken_away_gets_a_503_page_naming_the_grant(serve_console, role, conn):
    served = serve_console(role.dsn(PASSWORD))
    assert httpx.get(served.url + "/jobs").status_code == 200
    conn.execute(sql.SQL("REVOKE SELECT ON delta_job FROM {}").format(sql.Identifier(role.name)))
    refused = httpx.get(served.url + "/jobs")
    assert refused.status_code == 503
    assert "permission denied for table delta_job" in refused.text
    assert "grant that to the role this connects as" in refused.text
    assert PASSWORD not in refused.text
    role.grant()
    assert httpx.get(served.url + "/jobs").status_code == 200


def test_a_value_postgresql_cannot_store_gets_a_400_page(serve_console, dsn):
    served = serve_console()
    for path in ("/resources?error=a%00b", "/resources/customer/a%00b"):
        page = httpx.get(served.url + path)
        assert page.status_code == 400, (path, page.text)
        assert "PostgreSQL cannot store a value given" in page.text


class Ping(delta.Job, kind="console-ping"):
    n: int = 0


def test_jobs_are_listed_by_kind_and_state_retried_and_cancelled(serve_console, dsn, conn):
    with delta.Client.connect(dsn) as client:
        ids = [job.id for job in client.enqueue_many([Ping(n=i) for i in range(3)])]
    conn.execute(
        "UPDATE delta_job SET state = 'discarded', finalized_at = now(), errors = ARRAY["
        "jsonb_build_object('at', 1.0, 'attempt', 1, 'error', 'KeyError: gone'::text)] "
        "WHERE id = %s",
        (ids[0],),
    )
    conn.execute(
        "INSERT INTO delta_periodic (name, kind, namespace, schedule, next_run_at) "
        "VALUES ('nightly-ping', 'console-ping', 'default', 'every 3600s', now() + '1h')"
    )

    def job_states() -> list[str]:
        rows = conn.execute("SELECT state::text FROM delta_job WHERE id = ANY(%s) ORDER BY id",
                            (ids,)).fetchall()  # fmt: skip
        return [state for (state,) in rows]

    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        listing = browser.get("/jobs?kind=console-ping").text
        assert sorted(int(i) for i in re.findall(r'<tr data-id="(\d+)">', listing)) == ids
        assert "<td>nightly-ping</td><td>console-ping</td>" in listing
        discarded = browser.get("/jobs?kind=console-ping&state=discarded").text
        assert re.findall(r'<tr data-id="(\d+)">', discarded) == [str(ids[0])]
        assert "KeyError: gone" in discarded
        csrf = csrf_of(browser, "/jobs")
        form = {"csrf": csrf, "kind": "console-ping", "state": "discarded"}
        confirm = browser.post("/actions/retry-jobs", data=form)
        assert "<strong>1</strong> jobs" in confirm.text
        assert job_states() == ["discarded", "available", "available"]  # nothing yet
        done = browser.post("/actions/retry-jobs", data={**form, "confirm": "yes"})
        assert done.status_code == 303 and "retried+1" in done.headers["location"]
        assert job_states() == ["available"] * 3
        form = {"csrf": csrf, "kind": "console-ping", "state": "available", "confirm": "yes"}
        done = browser.post("/actions/cancel-jobs", data=form)
        assert done.status_code == 303 and "cancelled+3" in done.headers["location"]
    assert job_states() == ["cancelled"] * 3


def test_invalidate_and_delete_act_on_every_match_of_the_filter(serve_console, dsn, conn):
    seed(dsn)  # c0..c4 tagged eu, and the <script> one without a tag
    conn.execute("UPDATE delta_resource SET state = 'synced'")
    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/resources")
        form = {"csrf": csrf, "kind": "customer", "tag": "eu", "id": ["c0", "c1"]}
        confirm = browser.post("/actions/invalidate", data=form)
        assert "<strong>2</strong> resources" in confirm.text
        done = browser.post("/actions/invalidate", data={**form, "confirm": "yes"})
        assert done.status_code == 303 and "invalidated+2" in done.headers["location"]
        after = states(conn)
        assert [after[f"c{i}"] for i in range(5)] == ["scheduled"] * 2 + ["synced"] * 3
        form = {"csrf": csrf, "kind": "customer", "tag": "eu"}
        confirm = browser.post("/actions/delete", data=form)
        assert "<strong>5</strong> resources" in confirm.text
        done = browser.post("/actions/delete", data={**form, "confirm": "yes"})
        assert done.status_code == 303 and "deleted+5" in done.headers["location"]
    after = states(conn)
    assert [after[f"c{i}"] for i in range(5)] == ["deleting"] * 5
    assert after[SCRIPT_ID] == "synced"  # not tagged: not a match


def test_run_informer_asks_for_a_run_now_and_the_pages_say_so(serve_console, dsn, conn):
    # The row a leader registers for a controller with an informer, due in an hour.
    conn.execute("INSERT INTO delta_informer (kind, next_run_at) VALUES ('customer', now() + '1h')")
    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        for path in ("/", "/informers"):
            row = re.search(r'<tr data-kind="customer"><td>customer</td>.*?</tr>',
                            browser.get(path).text, re.S)  # fmt: skip
            assert row and re.search(r"<td>in \d+m</td>", row.group(0)), path
        csrf = csrf_of(browser, "/informers")
        form = {"csrf": csrf, "kind": "customer", "full": "yes"}
        done = browser.post("/actions/run-informer", data=form)
        assert done.status_code == 303
        assert done.headers["location"].startswith("/informers?done=asked+for+a+full+run")
        requested = conn.execute(
            "SELECT requested_at IS NOT NULL, requested_full FROM delta_informer"
        ).fetchone()
        assert requested == (True, True)
        row = re.search(r'<tr data-kind="customer"><td>customer</td>.*?</tr>',
                        browser.get("/informers").text, re.S)  # fmt: skip
        assert row and "<td>requested</td>" in row.group(0)
        unknown = browser.post("/actions/run-informer", data={**form, "kind": "nope"})
        assert unknown.status_code == 400
        assert "no informer of kind &#39;nope&#39;" in unknown.text


def test_a_large_table_shows_estimates_labelled_and_exact_troubled_counts(
    serve_console, dsn, conn, monkeypatch
):
    from delta_actors.web import reads

    with delta.Client.connect(dsn) as client:
        client.inform_many([Customer(key=f"c{i:04d}") for i in range(3000)])
    degrade(conn, ["c0001", "c0002", "c0003"], "TimeoutError: upstream timed out")
    conn.execute("ANALYZE delta_resource")
    served = serve_console()
    exact = re.search(r'<tr data-kind="customer">.*?</tr>', httpx.get(served.url + "/").text,
                      re.S)  # fmt: skip
    assert exact and '<td class="total">3,000</td>' in exact.group(0)
    # The same table past the limit: as a million rows would be read.
    monkeypatch.setattr(reads, "EXACT_LIMIT", 1000)
    page = httpx.get(served.url + "/").text
    row = re.search(r'<tr data-kind="customer">.*?</tr>', page, re.S)
    assert row
    assert '<td class="total">≈' in row.group(0)
    assert re.search(r'data-state="scheduled"[^>]*>scheduled <span class="count">≈', row.group(0))
    assert 'data-state="degraded"' in row.group(0)
    assert re.search(r'data-state="degraded"[^>]*>degraded <span class="count">3</span>',
                     row.group(0))  # fmt: skip
    assert "≈: the planner's estimate" in page


def test_a_confirmation_past_its_cap_shows_the_planners_estimate_labelled(
    serve_console, dsn, conn, monkeypatch
):
    from delta_actors.web import reads

    with delta.Client.connect(dsn) as client:
        client.inform_many([Customer(key=f"c{i:04d}") for i in range(3000)])
        jobs = [job.id for job in client.enqueue_many([Ping(n=i) for i in range(1500)])]
    degrade(conn, ["c0001", "c0002", "c0003"], "TimeoutError: upstream timed out")
    conn.execute("UPDATE delta_job SET state = 'discarded', finalized_at = now() WHERE id = %s",
                 (jobs[0],))  # fmt: skip
    conn.execute("ANALYZE delta_resource")
    conn.execute("ANALYZE delta_job")
    # The same rows past the cap: as a million would be counted.
    monkeypatch.setattr(reads, "CONFIRM_CAP", 1000)
    served = serve_console()
    with httpx.Client(base_url=served.url) as browser:
        csrf = csrf_of(browser, "/resources")
        form = {"csrf": csrf, "kind": "customer"}
        broad = browser.post("/actions/retry", data=form).text
        assert "<h1>Retry more than 1,000 resources?</h1>" in broad
        assert "<strong>more than 1,000</strong> resources" in broad
        about = re.search(r"\(about ([\d,]+), the planner's estimate\)", broad)
        assert about, broad
        assert 2000 <= int(about.group(1).replace(",", "")) <= 4000  # of 3,000 rows
        assert '<button type="submit" id="confirm">Retry every match</button>' in broad
        narrow = browser.post("/actions/retry", data={**form, "state": "degraded"}).text
        assert "<strong>3</strong> resources" in narrow and "estimate" not in narrow
        jobs_form = {"csrf": csrf, "kind": "console-ping"}
        many = browser.post("/actions/cancel-jobs", data=jobs_form).text
        # The planner takes a job's kind and its having no resource as independent (the
        # 3,000 resources' works are jobs too): a third of a third of 4,500, short of the
        # cap, which the page neither shows as the count nor lets lower it.
        assert "<strong>more than 1,000</strong> jobs" in many
        assert "(the planner estimates fewer: its statistics are rough for this filter)" in many
        one = browser.post("/actions/retry-jobs", data={**jobs_form, "state": "discarded"}).text
        assert "<strong>1</strong> jobs" in one and "estimate" not in one
        assert set(states(conn).values()) == {"scheduled", "degraded"}  # nothing done yet
        # The action behind an estimate still takes every match, not the cap's worth.
        done = browser.post("/actions/retry", data={**form, "confirm": "yes"})
        assert done.status_code == 303 and "retried+3%2C000" in done.headers["location"]
    assert set(states(conn).values()) == {"scheduled"}


def test_the_token_may_come_from_the_environment(dsn):
    env = {**os.environ, "DELTA_WEB_TOKEN": "s3cret-token-of-the-console"}
    proc = subprocess.Popen(
        [*WEB, "--host", ANYWHERE, "--port", "0", "--dsn", dsn, "--no-access-log"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                break
        else:
            pytest.fail("the console did not start:\n" + "".join(lines))
    finally:
        proc.terminate()
        code = proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0  # it served, on every address, with the token of the environment

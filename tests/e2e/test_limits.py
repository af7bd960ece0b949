"""A concurrency limit under real supervisors: two of them, two worker processes each,
never run more than the limit at once (sampled), and every job still runs. The enqueue's
NOTIFY wakes all four worker processes at once, so their claims race from the start;
the lock on the kind's limit row settles it. (Which process runs the jobs afterwards is
not promised: one that finishes a job claims again at once.)"""

from __future__ import annotations

import threading

import psycopg

import delta_actors as delta
from tests.e2e.apps import Metered, limited_app
from tests.waiting import wait_until

APP = "tests.e2e.apps:limited_app"
ACTORS = 3  # two workers of `default`, one leader candidate


def test_two_supervisors_never_run_more_than_the_limit(supervise, e2e_dsn):
    first = supervise(app=APP)
    second = supervise(app=APP)
    first.wait_started(ACTORS)
    second.wait_started(ACTORS)
    worst = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal worst
        with psycopg.connect(e2e_dsn, autocommit=True) as conn:
            while not sampling.is_set():
                actors = [
                    row[0]
                    for row in conn.execute(
                        "SELECT claimed_by FROM delta_job "
                        "WHERE kind = 'metered' AND state = 'running'"
                    ).fetchall()
                ]
                worst = max(worst, len(actors))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with delta.Client.connect(e2e_dsn, app=limited_app) as client:
            client.enqueue_many([Metered(n=i) for i in range(120)])

            def all_done() -> bool:
                page = client.list_jobs(Metered, state="completed", limit=200)
                return len(page.items) == 120

            wait_until(all_done, 60, "every metered job to run")
    finally:
        sampling.set()
        sampler.join()
    assert worst == 3, f"at most {worst} metered jobs ran at once"

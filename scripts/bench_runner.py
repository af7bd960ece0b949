"""Benchmark the inline test Runner (delta.testing): what a user's test pays for it.

On a throwaway cluster (or `$DELTA_TEST_DSN`), a fresh migrated database per scenario:
- `idle call`: one `run_until_idle()` with nothing due (its session: connections, an
  actor row, a claim that finds nothing), median of `--rounds`;
- `fails twice then degrades`: inform one object whose work always fails
  (max_attempts=3), run, `advance` past the worker's real backoff twice (1 s, 16 s):
  the wall time of the whole scenario, median of `--rounds`;
- `drain`: `--objects` objects informed, then one `run_until_idle()` that syncs them
  all: works per second.

Usage: python scripts/bench_runner.py [--rounds 20] [--objects 500]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import delta_actors as delta
from delta_actors.testing import DatabaseServer, Runner, TemplateDatabases
from delta_actors.testing.databases import database_prefix


class Thing(delta.Object, kind="thing"):
    key: str

    def id(self) -> str:
        return self.key


class Things(delta.Controller[Thing]):
    max_attempts = 3

    async def work(self, resource: delta.Resource[Thing]) -> None:
        if resource.object.key.startswith("bad"):
            raise RuntimeError("always fails")


APP = delta.App(controllers=[Things()])


def timed(databases: TemplateDatabases, scenario: Callable[[delta.Client], float]) -> float:
    name, dsn = databases.clone()
    try:
        with delta.Client.connect(dsn, app=APP) as client:
            return scenario(client)
    finally:
        databases.drop(name)


def idle_call(client: delta.Client) -> float:
    runner = Runner(APP, client)
    runner.run_until_idle()  # the first call also warms imports and plans
    started = time.perf_counter()
    runner.run_until_idle()
    return time.perf_counter() - started


def degrade(client: delta.Client) -> float:
    runner = Runner(APP, client)
    started = time.perf_counter()
    client.inform(Thing(key="bad"))
    assert runner.run_until_idle().failed == ["thing/bad"]
    assert runner.advance(2.0).failed == ["thing/bad"]
    assert runner.advance(20.0).degraded == ["thing/bad"]
    return time.perf_counter() - started


def drain(objects: int) -> Callable[[delta.Client], float]:
    def scenario(client: delta.Client) -> float:
        client.inform_many([Thing(key=f"t{i}") for i in range(objects)])
        started = time.perf_counter()
        assert len(Runner(APP, client).run_until_idle().synced) == objects
        return objects / (time.perf_counter() - started)

    return scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--objects", type=int, default=500)
    args = parser.parse_args()

    server = DatabaseServer.start()
    databases = TemplateDatabases(server, database_prefix("bench"))
    try:
        idle = [timed(databases, idle_call) for _ in range(args.rounds)]
        degraded = [timed(databases, degrade) for _ in range(args.rounds)]
        rates = [timed(databases, drain(args.objects)) for _ in range(3)]
    finally:
        databases.close()
        server.stop()
    print(f"idle call:                 {statistics.median(idle) * 1000:7.1f} ms (median)")
    print(f"fails twice then degrades: {statistics.median(degraded) * 1000:7.1f} ms (median)")
    print(f"drain of {args.objects} works:       {statistics.median(rates):7.0f} works/s")


if __name__ == "__main__":
    main()

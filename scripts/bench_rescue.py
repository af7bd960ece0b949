"""Benchmark a rescue pass on a slow link: seconds per pass by number of dead actors.

The leader's Rescuer talks to PostgreSQL through a TCP proxy that holds every chunk for
`--delay` seconds each way (a round trip of twice that, no loss). Each round inserts
`--actors` dead actors (a heartbeat a minute old) holding `--claims` running plain jobs
each, and times one `Rescuer.run_once()`. A leader duty's pass is cancelled after 5 s
(half its stall time), so a pass that grows with the dead actors can outlast it on a
link that is merely far away. With `--baseline DIR`, the same benchmark runs with DIR's
package (a `git worktree` of an older commit) too, alternating run by run.

Usage: python scripts/bench_rescue.py [--delay 0.1] [--actors 1,4,8,12] [--claims 20]
       [--runs 3] [--baseline DIR ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from benchlib import migrated_cluster, with_package_of
from psycopg_pool import AsyncConnectionPool

import delta_actors as delta
from delta_actors.leader.maintenance import Rescuer

ROOT = Path(__file__).resolve().parent.parent


class Plain(delta.Job, kind="plain"):
    n: int = 0


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy `reader` to `writer`, each chunk `delay` seconds after it arrived, in order."""
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(65536):
            chunks.put_nowait((time.monotonic() + delay, data))
        chunks.put_nowait((0.0, b""))

    async def send() -> None:
        while True:
            due, data = await chunks.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _slow_link(socket_path: str, delay: float) -> asyncio.Server:
    """A TCP listener on localhost that forwards to PostgreSQL's Unix socket, slowly."""

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(
            _forward(reader, server_writer, delay), _forward(server_reader, writer, delay)
        )

    return await asyncio.start_server(connected, "127.0.0.1", 0)


async def _dead_actors(
    client: delta.AsyncClient, conn: psycopg.AsyncConnection, count: int, claims: int
) -> None:
    for i in range(count):
        cur = await conn.execute(
            "INSERT INTO delta_actor (host, pid, namespace, role, heartbeat_at) VALUES"
            " ('gone', %s, 'default', 'worker', now() - interval '1 minute') RETURNING id",
            (i,),
        )
        row = await cur.fetchone()
        assert row is not None
        jobs = await client.enqueue_many([Plain(n=k) for k in range(claims)])
        await conn.execute(
            "UPDATE delta_job SET state = 'running', attempt = 1, claimed_by = %s,"
            " attempted_at = now() WHERE id = ANY(%s)",
            (row[0], [job.id for job in jobs]),
        )


async def measure(dsn: str, delay: float, actors: list[int], claims: int) -> dict[int, float]:
    """Seconds of one rescue pass per number of dead actors, through the slow link."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    link = await _slow_link(f"{info['host']}/.s.PGSQL.{info['port']}", delay)
    port = link.sockets[0].getsockname()[1]
    slow = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port)
    seconds: dict[int, float] = {}
    async with (
        AsyncConnectionPool(dsn, kwargs={"autocommit": True}) as near,
        AsyncConnectionPool(slow, kwargs={"autocommit": True}, min_size=1) as far,
    ):
        client = delta.AsyncClient(near)
        rescuer = Rescuer(far, ttl=10, orphan_interval=3600)
        await rescuer.run_once()  # the first pass also looks for orphans; later ones do not
        for count in actors:
            async with near.connection() as conn:
                await _dead_actors(client, conn, count, claims)
            started = time.monotonic()
            did = await rescuer.run_once()
            seconds[count] = time.monotonic() - started
            assert did == {"actors": count, "claims": count * claims}, did
    link.close()
    return seconds


def _run_with(tree: Path, args: argparse.Namespace) -> dict[int, float]:
    """One measurement in a child process that imports `tree`'s package."""
    argv = [sys.executable, __file__, "--child", "--delay", str(args.delay),
            "--actors", args.actors, "--claims", str(args.claims)]  # fmt: skip
    out = subprocess.run(argv, env=with_package_of(tree), cwd=tree, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.1, help="seconds each way")
    parser.add_argument("--actors", default="1,4,8,12", help="dead actors per pass, in turn")
    parser.add_argument("--claims", type=int, default=20, help="running jobs per dead actor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, action="append", default=[])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    actors = [int(x) for x in args.actors.split(",")]
    if args.child:
        with migrated_cluster() as dsn:
            seconds = asyncio.run(measure(dsn, args.delay, actors, args.claims))
        print(json.dumps(seconds))
        return
    trees = [ROOT, *args.baseline]
    runs: dict[Path, list[dict[int, float]]] = {tree: [] for tree in trees}
    for run in range(args.runs):
        for tree in trees[run % len(trees) :] + trees[: run % len(trees)]:
            runs[tree].append(_run_with(tree, args))
    print(f"one rescue pass, {args.claims} claims a dead actor, round trip {2 * args.delay:g} s;"
          f" median of {args.runs} runs, seconds")  # fmt: skip
    print(f"{'dead actors':<14}" + "".join(f"{tree.name or str(tree):>16}" for tree in trees))
    for count in actors:
        cells = [statistics.median(r[count] for r in runs[tree]) for tree in trees]
        print(f"{count:<14}" + "".join(f"{cell:>16.2f}" for cell in cells))


if __name__ == "__main__":
    main()

"""CPU-heavy work on two processes: count the primes in 16 ranges of integers.

Each `Chunk` is a range; its controller's `work` is a plain `def` that counts primes by
trial division (pure Python, so it holds the GIL). It lives in the "cpu" namespace with
`processes=2`: the supervisor forks two actor processes for it, and the chunks are shared
between them, so both cores are used. Each result goes to `out/<chunk>.json` with the pid
of the process that computed it.

Run it from the repository root:

    delta-actors supervise --app examples.cpu_heavy.app:app

(`python3 -m delta_actors supervise ...` is the same; without --dsn or
$DELTA_DATABASE_URL it uses the embedded database.)
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import delta_actors as delta

OUT = Path(os.environ.get("DELTA_EXAMPLE_OUT", Path(__file__).resolve().parent / "out"))
CHUNKS = 16
CHUNK_SIZE = 20_000


class Chunk(delta.Object, kind="prime-chunk"):
    """The integers in [start, stop)."""

    start: int
    stop: int

    def id(self) -> str:
        return f"{self.start}-{self.stop}"


def count_primes(start: int, stop: int) -> int:
    """Count the primes in [start, stop) by trial division: deliberately CPU-bound."""
    count = 0
    for n in range(max(start, 2), stop):
        divisor = 2
        while divisor * divisor <= n:
            if n % divisor == 0:
                break
            divisor += 1
        else:
            count += 1
    return count


class PrimeController(delta.Controller[Chunk]):
    """Counts the primes of each chunk, off the event loop, in the "cpu" namespace."""

    namespace = "cpu"
    inform_interval = 3600.0  # the chunks never change: one listing at start is enough

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Chunk]:
        for i in range(CHUNKS):
            yield Chunk(start=i * CHUNK_SIZE, stop=(i + 1) * CHUNK_SIZE)

    def work(self, resource: delta.Resource[Chunk]) -> None:
        # A plain def runs in the actor's thread pool; two processes give two cores.
        chunk = resource.object
        result = {"primes": count_primes(chunk.start, chunk.stop), "pid": os.getpid()}
        OUT.mkdir(parents=True, exist_ok=True)
        target = OUT / f"{chunk.id()}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(target)


app = delta.App(
    controllers=[PrimeController()],
    namespaces={"default": delta.Namespace(), "cpu": delta.Namespace(max_workers=2, processes=2)},
)

"""A CPU-heavy controller in a namespace with two processes.

Each `Document` takes ~20 ms of pure-Python work (an iterated hash). A plain `def` work
runs in a thread, and threads of one process share the GIL: `processes=2` gives the
namespace two actor processes, so two cores work at once. The informer lists 200
synthetic documents (`$CPU_HEAVY_COUNT` to change it) once an hour; the controller writes
each digest and the pid that computed it into `out/` (or `$DELTA_EXAMPLE_OUT`).

    delta-actors supervise --app examples.cpu_heavy.app:app
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import delta_actors as delta

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("DELTA_EXAMPLE_OUT") or HERE / "out")


class Document(delta.Object, kind="document"):
    key: str
    rounds: int = 20_000

    def id(self) -> str:
        return self.key


class DigestController(delta.Controller[Document]):
    namespace = "crunch"
    inform_interval = 3600.0

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Document]:
        for index in range(int(os.environ.get("CPU_HEAVY_COUNT", "200"))):
            yield Document(key=f"doc-{index:04d}")

    def work(self, resource: delta.Resource[Document]) -> None:
        digest = resource.object.key.encode()
        for _ in range(resource.object.rounds):
            digest = hashlib.sha256(digest).digest()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{resource.object.key}.txt").write_text(f"{digest.hex()} {os.getpid()}\n")


app = delta.App(
    controllers=[DigestController()],
    namespaces={"crunch": delta.Namespace(max_workers=4, processes=2)},
)

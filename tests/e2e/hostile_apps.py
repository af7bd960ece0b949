"""An app for the hostile-runtime tests: a work that floods the log, a job that sends a
truncated frame, a plain def that runs until told to stop, and the e2e app's controllers
(runs recorded in `e2e_run`)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import time

import delta_actors as delta
from delta_actors.runtime import protocol
from tests.e2e.apps import ReportController, TaskController

logger = logging.getLogger("tests.flood")
FLOOD_LINE = "flood " + "x" * 200


class Flood(delta.Object, kind="flood"):
    """A work that logs as fast as it can for `seconds`."""

    key: str
    seconds: float

    def id(self) -> str:
        return self.key


class FloodController(delta.Controller[Flood]):
    timeout = 60.0

    def work(self, resource: delta.Resource[Flood]) -> None:
        deadline = time.monotonic() + resource.object.seconds
        lines = 0
        while time.monotonic() < deadline:
            for _ in range(100):
                logger.warning(FLOOD_LINE)
            lines += 100
        logger.warning("flood done after %d lines", lines)


class Stuck(delta.Object, kind="stuck"):
    """A plain def that appends its time to `path` every 50 ms until `path`.done exists."""

    key: str
    path: str

    def id(self) -> str:
        return self.key


class StuckController(delta.Controller[Stuck]):
    def work(self, resource: delta.Resource[Stuck]) -> None:
        path = resource.object.path
        while not os.path.exists(path + ".done"):
            with open(path, "a") as ticks:  # a side effect that needs no network
                ticks.write(f"{time.time()}\n")
            time.sleep(0.05)


class Truncate(delta.Job, kind="truncate"):
    """Sends the start of a frame that announces MAX_FRAME bytes and never finishes it."""


def truncate(job: Truncate) -> None:
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            if sock.family == socket.AF_UNIX and sock.getpeername() == "":
                sock.sendall(struct.pack(">I", protocol.MAX_FRAME) + b"\x81\xa4type")


app = delta.App(
    controllers=[TaskController(), ReportController(), FloodController(), StuckController()],
    jobs={Truncate: truncate},
    namespaces={
        "default": delta.Namespace(max_workers=20),
        "reports": delta.Namespace(max_workers=5),
    },
)

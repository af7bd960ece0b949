"""Progress of long CLI commands: one self-erasing line on a terminal, nothing elsewhere.

Progress is for a person watching; logs and pipes get only the command's result. So a
Progress writes only when its stream is a TTY, rewrites one line in place (carriage
return, erase line), and erases it when done, leaving the terminal as clean as a pipe.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

_ERASE = "\r\x1b[K"


class Progress:
    """Shows `[done/total] what` on `stream` (stderr by default) when it is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.is_shown = self._stream.isatty()
        self._drawn = False

    def step(self, done: int, total: int, what: str) -> None:
        """Show that `done` of `total` steps are finished and `what` comes next."""
        if not self.is_shown:
            return
        self._stream.write(f"{_ERASE}[{done}/{total}] {what}")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the progress line; idempotent."""
        if self._drawn:
            self._stream.write(_ERASE)
            self._stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Object bases the tests share."""

from __future__ import annotations

import delta_actors as delta


class Keyed(delta.Object):
    """An abstract object (no kind) identified by its `key`; subclasses give the kind."""

    key: str

    def id(self) -> str:
        return self.key

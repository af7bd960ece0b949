"""`delta.Page`: one page of a listing, and the cursor to the next."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], frozen=True):
    """Items of a listing in its order; `next` is the `after=` of the next page (None: the
    last page). Cursors are opaque strings; a page never skips or repeats a row that
    stays, whatever is written meanwhile."""

    items: list[T]
    next: str | None

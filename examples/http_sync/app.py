"""Sync articles from a paginated HTTP API into PostgreSQL; write one file per article.

The API (`api.py`) pages with an opaque cursor and filters by `created_after`. The
informer runs every 2 seconds: usually it lists only articles created after the newest
`created_at` it has seen (the delta cursor), and every 10 seconds it lists everything, so
that edits are picked up (`version` is the `compare` field: a higher version is newer)
and articles the API no longer lists are marked deleted (`tombstones = True`).

Run it from the repository root with one command (it starts the API, then supervises):

    python3 -m examples.http_sync

then, with the URL it prints, `curl -X PUT -d '{"title": "New"}' URL/articles/a001` or
`curl -X DELETE URL/articles/a002` and watch examples/http_sync/out/ follow.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import urlopen

import delta_actors as delta

URL_ENV = "HTTP_SYNC_URL"
OUT = Path(os.environ.get("DELTA_EXAMPLE_OUT", Path(__file__).resolve().parent / "out"))
PAGE = 10


def _get(url: str) -> Any:
    """GET a JSON document (blocking; the informer runs it in a thread)."""
    with urlopen(url, timeout=10) as response:  # noqa: S310 (our own http:// API)
        return json.load(response)


class Article(delta.Object, kind="article"):
    """An article as the API serves it."""

    id_: str
    title: str
    version: int
    created: datetime

    def id(self) -> str:
        return self.id_

    def compare(self, stored: Article) -> int:
        return self.version - stored.version

    def created_at(self) -> datetime:
        return self.created


class ArticleController(delta.Controller[Article]):
    """Pages through the API and writes each article to `OUT/<id>.json`."""

    inform_interval = 2.0
    full_interval = 10.0
    tombstones = True

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Article]:
        base = os.environ.get(URL_ENV)
        if not base:
            raise RuntimeError(
                f"${URL_ENV} is not set: run this example with `python3 -m examples.http_sync`, "
                "which starts the API and sets it"
            )
        query: dict[str, str] = {"limit": str(PAGE)}
        if options.after is not None:
            query["created_after"] = options.after.isoformat()
        while True:
            page = await asyncio.to_thread(_get, f"{base}/articles?{urlencode(query)}")
            for item in page["items"]:
                yield Article(
                    id_=item["id"],
                    title=item["title"],
                    version=item["version"],
                    created=datetime.fromisoformat(item["created_at"]),
                )
            if page["next"] is None:
                return
            query["cursor"] = page["next"]

    def work(self, resource: delta.Resource[Article]) -> None:
        # A plain def: blocking file I/O runs off the event loop.
        article = resource.object
        OUT.mkdir(parents=True, exist_ok=True)
        target = OUT / f"{article.id_}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps({"title": article.title, "version": article.version}))
        tmp.replace(target)


app = delta.App(controllers=[ArticleController()])

"""Sync from a paginated HTTP API: cursor, created_at, compare and tombstones.

The informer pages through `$HTTP_SYNC_API/products` (served by `api.py`, started by
`python -m examples.http_sync`): every 2 seconds it asks for the products changed after
its cursor (the newest `created_at()` it has seen), every 10 seconds for everything, and
after such a full listing the products the API no longer lists are marked deleted
(tombstones: the resource's state becomes `deleted`, no work runs). `compare()` keeps an
older copy of a product from overwriting a newer one. The controller writes one file per
product version into `out/` (or `$DELTA_EXAMPLE_OUT`). Watch it with
`delta-actors status` and `delta-actors inspect product sku-0003`."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import delta_actors as delta

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("DELTA_EXAMPLE_OUT") or HERE / "out")


class Product(delta.Object, kind="product"):
    """A product as the API lists it."""

    sku: str
    name: str
    price: float
    updated_at: datetime

    def id(self) -> str:
        return self.sku

    def compare(self, stored: Product) -> int:
        # The API's updated_at orders versions: an older copy is stale, not stored.
        return (self.updated_at > stored.updated_at) - (self.updated_at < stored.updated_at)

    def created_at(self) -> datetime:
        # The informer's cursor: the next run asks for changes after the newest one seen.
        return self.updated_at


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own API)
        return json.loads(response.read())  # type: ignore[no-any-return]


class ProductController(delta.Controller[Product]):
    inform_interval = 2.0
    full_interval = 10.0
    tombstones = True

    async def inform(self, options: delta.InformOptions) -> AsyncIterator[Product]:
        base = os.environ["HTTP_SYNC_API"]
        cursor: str | None = None
        while True:
            query = {"limit": "10"}
            if options.after is not None:
                query["after"] = options.after.isoformat()
            if cursor:
                query["cursor"] = cursor
            # Blocking I/O off the event loop; an error leaves the informer's cursor as it was.
            page = await asyncio.to_thread(_get, f"{base}/products?{urlencode(query)}")
            for item in page["items"]:  # type: ignore[attr-defined]
                yield Product(
                    sku=item["sku"], name=item["name"], price=float(item["price"]),
                    updated_at=datetime.fromisoformat(item["updated_at"]),
                )  # fmt: skip
            cursor = page["next"]  # type: ignore[assignment]
            if cursor is None:
                return

    def work(self, resource: delta.Resource[Product]) -> None:
        product = resource.object
        OUT.mkdir(parents=True, exist_ok=True)
        target = OUT / f"{product.sku}.json"
        tmp = target.with_suffix(".tmp")
        record = {"sku": product.sku, "price": product.price, "generation": resource.generation}
        tmp.write_text(json.dumps(record))
        tmp.replace(target)


app = delta.App(controllers=[ProductController()])

"""A small paginated JSON API, standing in for an external system.

`GET /products?limit=N&cursor=C` lists products ordered by (updated_at, sku); the reply
has `items` and `next` (the cursor of the page after, or null). `after=ISO-TIME` lists
only products changed after that time, which is what the informer asks for between full
listings. A deleted product simply disappears: the informer's full listings let
delta_actors mark it deleted (tombstones).

A churn thread makes the system change by itself, deterministically: every `tick`
seconds one product's price changes; every third tick the newest product is deleted
and a new one added.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Store:
    """The external system's data, changing on its own."""

    def __init__(self, count: int = 25) -> None:
        self.lock = threading.Lock()
        self.products: dict[str, dict[str, object]] = {}
        self.next_sku = 0
        for _ in range(count):
            self._add()

    def _add(self) -> None:
        sku = f"sku-{self.next_sku:04d}"
        self.next_sku += 1
        self.products[sku] = {
            "sku": sku, "name": f"Product {sku}", "price": 10.0 + self.next_sku,
            "updated_at": datetime.now(UTC).isoformat(),
        }  # fmt: skip

    def churn(self, tick: int) -> None:
        with self.lock:
            skus = sorted(self.products)
            product = self.products[skus[tick % len(skus)]]
            product["price"] = round(float(product["price"]) * 1.1, 2)  # type: ignore[arg-type]
            product["updated_at"] = datetime.now(UTC).isoformat()
            if tick % 3 == 2:
                del self.products[skus[-1]]
                self._add()

    def page(self, after: str | None, cursor: str | None, limit: int) -> dict[str, object]:
        with self.lock:
            rows = sorted(self.products.values(), key=lambda p: (p["updated_at"], p["sku"]))
        if after:
            rows = [p for p in rows if str(p["updated_at"]) > after]
        if cursor:
            rows = [p for p in rows if f"{p['updated_at']}|{p['sku']}" > cursor]
        items = rows[:limit]
        more = len(rows) > limit
        last = items[-1] if items else None
        return {
            "items": items,
            "next": f"{last['updated_at']}|{last['sku']}" if more and last else None,
        }


def serve(store: Store, port: int = 0, tick: float = 2.0) -> ThreadingHTTPServer:
    """Serve `store` on 127.0.0.1:`port` (0: any free port) and churn it; return the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/products":
                self.send_error(404)
                return
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            body = json.dumps(
                store.page(query.get("after"), query.get("cursor"), int(query.get("limit", 10)))
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="api").start()

    def churn() -> None:
        count = 0
        while True:
            time.sleep(tick)
            store.churn(count)
            count += 1

    threading.Thread(target=churn, daemon=True, name="churn").start()
    return server

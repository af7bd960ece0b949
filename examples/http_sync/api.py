"""A tiny paginated JSON API of articles: the "external system" of the HTTP example.

    GET    /articles?created_after=ISO&cursor=C&limit=N  -> {"items": [...], "next": C | null}
    PUT    /articles/ID  {"title": ...}                  -> the article (version + 1)
    DELETE /articles/ID                                  -> 204

Items are ordered by (created_at, id); `cursor` is the opaque position after the last item
of the previous page. Run `python -m examples.http_sync.api` to serve it alone; it prints
its URL on the first line of stdout.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

START = datetime(2026, 1, 1, tzinfo=UTC)
ARTICLES = 25
MAX_LIMIT = 100


class Store:
    """The articles, in memory; a lock makes each request see one consistent state."""

    def __init__(self, count: int = ARTICLES) -> None:
        self.lock = threading.Lock()
        self.articles: dict[str, dict[str, Any]] = {}
        for i in range(count):
            article_id = f"a{i:03d}"
            self.articles[article_id] = {
                "id": article_id,
                "title": f"Article {i}",
                "version": 1,
                "created_at": (START + timedelta(minutes=i)).isoformat(),
            }

    def page(self, created_after: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self.articles.values(), key=lambda a: (a["created_at"], a["id"]))
        if created_after is not None:
            after = datetime.fromisoformat(created_after)
            ordered = [a for a in ordered if datetime.fromisoformat(a["created_at"]) > after]
        if cursor is not None:
            last = json.loads(base64.urlsafe_b64decode(cursor))
            ordered = [a for a in ordered if [a["created_at"], a["id"]] > last]
        items = ordered[:limit]
        more = len(ordered) > limit
        next_cursor = (
            base64.urlsafe_b64encode(
                json.dumps([items[-1]["created_at"], items[-1]["id"]]).encode()
            ).decode()
            if more
            else None
        )
        return {"items": items, "next": next_cursor}


class Handler(BaseHTTPRequestHandler):
    store: Store

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/articles":
            self._send(404, {"error": f"no such path {url.path}; try /articles"})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            limit = min(int(query.get("limit", "10")), MAX_LIMIT)
            body = self.store.page(query.get("created_after"), query.get("cursor"), limit)
        except ValueError as exc:
            self._send(400, {"error": f"bad query: {exc}"})
            return
        self._send(200, body)

    def do_PUT(self) -> None:
        article_id = self._article_id()
        if article_id is None:
            return
        length = int(self.headers.get("Content-Length", "0"))
        title = json.loads(self.rfile.read(length) or b"{}").get("title")
        with self.store.lock:
            article = self.store.articles.get(article_id)
            if article is not None:
                if title is not None:
                    article["title"] = title
                article["version"] += 1
                article = dict(article)
        if article is None:
            self._send(404, {"error": f"no article {article_id}"})
        else:
            self._send(200, article)

    def do_DELETE(self) -> None:
        article_id = self._article_id()
        if article_id is None:
            return
        with self.store.lock:
            found = self.store.articles.pop(article_id, None) is not None
        self._send(204 if found else 404, None)

    def _article_id(self) -> str | None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "articles":
            self._send(404, {"error": "use /articles/ID"})
            return None
        return parts[1]

    def _send(self, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the informer polls


def serve(host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Return a server bound to host:port (0: an ephemeral port), not yet serving."""
    handler = type("ArticlesHandler", (Handler,), {"store": Store()})
    return ThreadingHTTPServer((host, port), handler)


def main() -> None:
    server = serve()
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())

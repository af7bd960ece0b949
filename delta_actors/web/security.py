"""The console's guard: where it may listen, who may read it, which POSTs it accepts.

Invariants
    - It listens on a loopback address unless it has a token: `check_binding` refuses a
      start on any other address without one, before a socket is opened.
    - With a token, every request proves it: the `Authorization: Bearer` header, or the
      cookie that a visit to any page with `?token=` sets (HttpOnly, SameSite=Strict; the
      redirect that sets it drops the token from the URL, so it stays out of history and
      of the access log that follows). Anything else gets 401.
    - Every POST carries the CSRF token (a form field `csrf`, or the `X-CSRF-Token`
      header) equal to the browser's `delta_csrf` cookie (double submit): a page of
      another origin can neither read the cookie nor, under SameSite=Strict, send it.
      Anything else gets 403, before the request reaches an action.
    - Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delta_actors.errors import ConfigError

TOKEN_ENV = "DELTA_WEB_TOKEN"  # noqa: S105 (a variable's name, not a secret)
TOKEN_COOKIE = "delta_token"  # noqa: S105 (a cookie's name, not a secret)
CSRF_COOKIE = "delta_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = b"x-csrf-token"
MAX_FORM = 64 * 1024  # bytes of a form body


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token, naming the fix."""
    if token is not None and len(token) < 16:
        raise ConfigError("the console's token must be at least 16 characters long")
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the console on {host}, beyond this machine, without a "
            f"token: pass --token or set {TOKEN_ENV} (or bind to 127.0.0.1)"
        )


def cookies_of(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001, S112 (a malformed cookie is no cookie)
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def header_of(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class Guard:
    """ASGI middleware enforcing the token and the CSRF check (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = cookies_of(scope)
        set_cookies: list[str] = []
        path = (scope.get("root_path") or "") + "/"
        if self.token is not None and not self._authorized(scope, cookies):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if scope["method"] == "GET" and _same(query.get("token"), self.token):
                del query["token"]
                root, target = scope.get("root_path") or "", scope["path"]
                if not target.startswith(root):  # servers differ on whether path has it
                    target = root + target
                location = target + ("?" + urlencode(query) if query else "")
                cookie = _cookie(TOKEN_COOKIE, self.token, path)
                await _respond(send, 303, b"", [(b"location", location.encode()), cookie])
                return
            await _respond(send, 401, UNAUTHORIZED, [(b"content-type", b"text/html")])
            return
        csrf = cookies.get(CSRF_COOKIE)
        if not csrf:
            csrf = secrets.token_urlsafe(32)
            set_cookies.append(csrf)
        scope.setdefault("state", {})["csrf"] = csrf
        if scope["method"] == "POST":
            body = await _read_body(receive)
            if body is None:
                await _respond(send, 413, b"form too large", [])
                return
            form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
            sent = header_of(scope, CSRF_HEADER) or dict(form).get(CSRF_FIELD)
            if set_cookies or not _same(sent, csrf):
                await _respond(send, 403, FORBIDDEN, [(b"content-type", b"text/html")])
                return
            scope["state"]["form"] = form
            receive = _replay(body)

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and set_cookies:
                headers = list(message.get("headers", []))
                headers.append(_cookie(CSRF_COOKIE, set_cookies[0], path))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _authorized(self, scope: Scope, cookies: dict[str, str]) -> bool:
        bearer = header_of(scope, b"authorization") or ""
        if bearer.startswith("Bearer ") and _same(bearer[len("Bearer ") :], self.token):
            return True
        return _same(cookies.get(TOKEN_COOKIE), self.token)


UNAUTHORIZED = (
    b"<!doctype html><title>delta console: token needed</title><p>This console needs its "
    b"token: open it with <code>?token=...</code> once, or send "
    b"<code>Authorization: Bearer ...</code>.</p>"
)
FORBIDDEN = (
    b"<!doctype html><title>delta console: refused</title><p>Refused: this POST has no "
    b"valid CSRF token. Reload the page and submit it again.</p>"
)


def _cookie(name: str, value: str, path: str) -> tuple[bytes, bytes]:
    attributes = f"{name}={value}; Path={path}; HttpOnly; SameSite=Strict"
    return (b"set-cookie", attributes.encode("latin-1"))


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _respond(send: Send, status: int, body: bytes, headers: list[Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The per-launch secret that makes the desktop server answer only its own window: the window's first URL
carries it (`/?slm_key=...`), which sets an HttpOnly cookie; every later request carries the cookie (or the
`X-SLM-Key` header). Anything else gets 403 and nothing more, whatever its Host."""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from slm_core.infer.guard import plain_response

COOKIE = "slm_desktop_key"
HEADER = "x-slm-key"
QUERY = "slm_key"
# Gradio's launch() probes this itself, without any key, and refuses to start when it fails; it answers `true`.
OPEN_PATHS = frozenset({"/gradio_api/startup-events"})


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def first_url(port: int, secret: str) -> str:
    return f"http://127.0.0.1:{port}/?{QUERY}={secret}"


def presented(scope: dict) -> tuple[str, bool]:
    """The key a request carries and whether it came in the query string (then the response sets the cookie)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    if HEADER in headers:
        return headers[HEADER], False
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is simply no key
        pass
    if COOKIE in cookie:
        return cookie[COOKIE].value, False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get(QUERY) or [""])[0], True


class SecretGate:
    """ASGI middleware: requests without this launch's secret get 403 (a websocket is closed)."""

    def __init__(self, app: Any, secret: str):
        self.app, self.secret = app, secret

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key, from_query = presented(scope)
        if not hmac.compare_digest(key.encode(), self.secret.encode()):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await plain_response(send, 403, "Forbidden.")
            return
        if not from_query or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = f"{COOKIE}={self.secret}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

        async def with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", cookie)])
            await send(message)

        await self.app(scope, receive, with_cookie)

"""The rules of a local server, shared by `slm serve` and the Studio: which Host names and Origins a
request may carry (loopback, the bound address, hosts the user allowed), and refusing an exposed bind."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

import psutil

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_loopback(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> set[str]:
    """Host names a request may name: localhost forms, the bound address (every local address and this
    machine's names when bound to all interfaces), and `extra` (--allow-host, a share link's host)."""
    hosts = set(LOCAL_HOSTS) | {h.strip("[]").lower() for h in extra if h}
    bind = (bind_host or "").strip("[]").lower()
    if bind in WILDCARD_HOSTS:
        hosts |= _local_addresses() | ({bind} if bind else set())
    else:
        hosts.add(bind)
    return hosts


def _local_addresses() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        for addresses in psutil.net_if_addrs().values():
            names |= {a.address.split("%")[0].lower() for a in addresses
                      if a.family in (socket.AF_INET, socket.AF_INET6)}
    except OSError:
        pass
    return names


def split_host(value: str) -> tuple[str, Optional[int]]:
    """'name:port', '[::1]:port', 'name' → (lowercase name without brackets, port or None)."""
    value = (value or "").strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    return name, int(port) if port.isdigit() else None


class LocalGuard:
    """ASGI middleware: a request whose Host is not this server's address (DNS rebinding) or whose Origin
    is another site (a page the user visits) gets 403, a websocket is closed; the rest reach `app`."""

    def __init__(self, app: Any, hosts: set[str], port: Optional[int] = None):
        self.app, self.hosts, self.port = app, hosts, port

    def problem(self, headers: dict[str, str]) -> Optional[str]:
        """Why a request with these headers is refused (None when it is served)."""
        name, port = split_host(headers.get("host", ""))
        if name not in self.hosts:
            return f"Host {headers.get('host', '')!r} is not this server's address"
        if port is not None and self.port is not None and port != self.port and name in LOCAL_HOSTS:
            return f"Host {headers.get('host')!r} names another port"
        origin = headers.get("origin")
        if origin is None:
            return None
        parts = urlsplit(origin)
        try:
            origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # a port that is not a number
            origin_port = None
        if (parts.hostname or "") not in self.hosts or origin_port != (port or DEFAULT_PORTS.get(parts.scheme)):
            return f"cross-origin request from {origin!r} refused"
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.problem(headers)
        if problem and scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif problem:
            await plain_response(send, 403, f"Forbidden: {problem}.")
        else:
            await self.serve(scope, receive, send)

    async def serve(self, scope: dict, receive: Any, send: Any) -> None:
        """A request that passed the checks (a subclass adds its own, e.g. login throttling)."""
        await self.app(scope, receive, send)


async def plain_response(send: Any, status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})

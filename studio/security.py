"""The Studio as a local app, not a file server: `StudioGuard` (Host, Origin and login checks), `PathPolicy`
(the folders the page may read) and `launch_problem` (no exposed address without --auth)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from slm_core.errors import SLMError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


# ---- launching --------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch_problem(host: str, share: bool, auth: Any, insecure: bool) -> Optional[str]:
    """Why the Studio must not start with these settings (None when it may)."""
    if auth or insecure or (is_loopback(host) and not share):
        return None
    where = "a public --share link" if share else f"--host {host}"
    return (f"refusing to serve the Studio on {where} without a login: anyone who reaches it could start "
            "training and read local files. Add --auth USER:PASSWORD, or --insecure if this network is yours alone.")


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
        import psutil

        for addresses in psutil.net_if_addrs().values():
            names |= {a.address.split("%")[0].lower() for a in addresses
                      if a.family in (socket.AF_INET, socket.AF_INET6)}
    except (ImportError, OSError):
        pass
    return names


# ---- the middleware --------------------------------------------------------------------------

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


class LoginLimiter:
    """At most `max_failures` failed logins per client in `window_s`; then the client's logins get 429
    for `lockout_s`. A success clears the client's record. Bounded: old records are dropped."""

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, lockout_s: float = 60.0,
                 max_clients: int = 10_000):
        self.max_failures, self.window_s, self.lockout_s = max_failures, window_s, lockout_s
        self.max_clients = max_clients
        self._failures: dict[str, deque] = {}
        self._locked: dict[str, float] = {}  # client → unlocked at (monotonic)
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds the client must wait before trying again (0: it may try now)."""
        with self._lock:
            until = self._locked.get(client, 0.0) - time.monotonic()
            if until <= 0:
                self._locked.pop(client, None)
            return max(0.0, until)

    def record(self, client: str, ok: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if ok:
                self._failures.pop(client, None)
                return
            if len(self._failures) >= self.max_clients:
                self._prune(now)
            failures = self._failures.setdefault(client, deque())
            failures.append(now)
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            if len(failures) >= self.max_failures:
                self._locked[client] = now + self.lockout_s
                failures.clear()

    def _prune(self, now: float) -> None:
        for client in [c for c, f in self._failures.items() if not f or now - f[-1] > self.window_s]:
            del self._failures[client]
        for client in [c for c, until in self._locked.items() if until < now]:
            del self._locked[client]
        while len(self._failures) >= self.max_clients:  # a flood of distinct clients: forget the oldest
            self._failures.pop(next(iter(self._failures)))


class StudioGuard:
    """ASGI middleware: Host and Origin checks on every HTTP and websocket request, login throttling."""

    def __init__(self, app: Any, hosts: set[str], port: Optional[int] = None,
                 limiter: Optional[LoginLimiter] = None):
        self.app, self.hosts, self.port = app, hosts, port
        self.limiter = limiter or LoginLimiter()

    def problem(self, headers: dict[str, str]) -> Optional[str]:
        """Why a request with these headers is refused (None when it is served)."""
        name, port = split_host(headers.get("host", ""))
        if name not in self.hosts:
            return f"Host {headers.get('host', '')!r} is not this Studio's address"
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
            return
        if problem:
            await _plain(send, 403, f"Forbidden: {problem}.")
            return
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            await self._login(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.limiter.retry_after(client)
        if wait > 0:
            await _plain(send, 429, f"Too many failed logins: try again in {wait:.0f} s.",
                         [(b"retry-after", str(int(wait) + 1).encode())])
            return

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status in (400, 401, 403):
                    self.limiter.record(client, ok=False)
                elif status < 300:
                    self.limiter.record(client, ok=True)
            await send(message)

        await self.app(scope, receive, watch)


async def _plain(send: Any, status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def guarded_app(hosts: set[str], port: Optional[int], limiter: Optional[LoginLimiter] = None) -> Any:
    """A Gradio App (FastAPI) whose whole middleware stack, Gradio's CORS layer included, sits inside
    StudioGuard. Passed to `Blocks.launch(_app=...)`: Gradio adds its routes and middleware to it as it
    would to the app it makes itself (default_response_class as Gradio sets it)."""
    from fastapi.responses import ORJSONResponse
    from gradio.routes import App

    class GuardedApp(App):
        def build_middleware_stack(self):  # Starlette builds this once, at the first request/lifespan
            return StudioGuard(super().build_middleware_stack(), hosts, port, limiter)

    return GuardedApp(default_response_class=ORJSONResponse)


# ---- paths -----------------------------------------------------------------------------------

def upload_folder() -> Path:
    """Where Gradio keeps uploaded files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


class PathPolicy:
    """The folders the page may read. Paths are resolved (symlinks followed) before they are compared, so
    a link inside an allowed folder that points out of it is refused."""

    def __init__(self, runs_dir: str | Path, allowed: Iterable[str | Path] = ()):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self._roots = [self.runs_dir, upload_folder().resolve()]
        self._lock = threading.Lock()
        for folder in allowed:
            self.allow(folder)

    @property
    def roots(self) -> list[Path]:
        with self._lock:
            return list(self._roots)

    def allow(self, folder: str | Path) -> Path:
        """Add a folder (or a file's folder) for the rest of this session."""
        path = Path(str(folder).strip()).expanduser().resolve()
        if path.is_file():
            path = path.parent
        if path == Path(path.anchor):
            raise SLMError("the whole file system cannot be allowed: name a folder that holds your data")
        if not path.is_dir():
            raise SLMError(f"{path} is not a folder")
        with self._lock:
            if path not in self._roots:
                self._roots.append(path)
        return path

    def allows(self, path: str | Path) -> bool:
        resolved = Path(path).expanduser().resolve()
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def check(self, path: str | Path) -> Path:
        """`path` resolved, or SLMError when it lies outside the allowed folders."""
        resolved = Path(path).expanduser().resolve()
        if not self.allows(resolved):
            folder = resolved if resolved.is_dir() else resolved.parent
            raise SLMError(f"{path} is outside the folders the Studio reads (the runs folder, uploads and folders "
                           f"you allowed): allow {folder} in the page, or start the Studio with --allow-path {folder}")
        return resolved

    # What a value from the page names, before checking it:

    def model_path(self, value: str) -> Path:
        """A model picker's value as the loaders read it: a folder path, else a run name in the runs dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() or path.exists() else self.runs_dir / value

    def run_path(self, name: str) -> Path:
        """A run name (or a path) → the run folder, which must be inside the runs directory."""
        path = self.runs_dir / Path(name).expanduser()
        resolved = path.resolve()
        if resolved == self.runs_dir or not resolved.is_relative_to(self.runs_dir):
            raise SLMError(f"{name!r} is not a run in {self.runs_dir}: pick one from the list")
        return path

    def data_path(self, source: str) -> Optional[Path]:
        """The local path a data source names, or None for the built-in corpora and Hub names."""
        from slm_core.data.sources import HUB_NAME, TABULAR_SUFFIXES, TEXT_SUFFIXES

        source = source.strip()
        if not source or source.startswith("builtin"):
            return None
        path = Path(source).expanduser()
        if not path.exists() and HUB_NAME.match(source) and \
                path.suffix.lower() not in TEXT_SUFFIXES + tuple(TABULAR_SUFFIXES):
            return None
        return path

    def folder_to_offer(self, kind: str, value: Any) -> Optional[Path]:
        """The folder to offer to allow when `value` (of `kind`, see check_path) is refused, else None."""
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None or not str(item).strip() or kind == "run":
                continue
            item = str(item).strip()
            path = self.data_path(item) if kind == "data" else \
                self.model_path(item) if kind == "model" else Path(item).expanduser()
            if path is not None and not self.allows(path) and path.exists():
                resolved = path.resolve()
                return resolved if resolved.is_dir() else resolved.parent
        return None


def check_value(policy: PathPolicy, kind: str, value: Any) -> Any:
    """Check one page value (or a list of them) of `kind`: 'path' (a file or folder), 'data' (a data
    source: built-ins and Hub names pass), 'model' (a run name or a model folder) or 'run' (a run in the
    runs dir). Returns the value unchanged; raises SLMError when it reaches outside the allowed folders."""
    if isinstance(value, (list, tuple)):
        for item in value:
            check_value(policy, kind, item)
        return value
    if value is None or not str(value).strip():
        return value
    text = str(value).strip()
    if kind == "run":
        policy.run_path(text)
    elif kind == "data":
        path = policy.data_path(text)
        if path is not None:
            policy.check(path)
    elif kind == "model":
        policy.check(policy.model_path(text))
    elif kind == "path":
        policy.check(text)
    else:
        raise ValueError(f"unknown path kind {kind!r}")
    return value


def check_path(ctx: Any, value: Any, kind: str = "path") -> Any:
    """The gate for every Studio event that takes a path or a run name: `value` unchanged when the page
    may read it, else a gr.Error the page shows (and API clients receive), without a server traceback."""
    try:
        return check_value(ctx.paths, kind, value)
    except SLMError as error:
        import gradio as gr

        raise gr.Error(str(error), print_exception=False) from None


# The run settings (StudioContext.fields keys) that name files or folders, and how each is checked.
FIELD_KINDS = {"data.source": "data", "tokenizer.path": "path", "train.init_from": "model", "distill.teacher": "model"}


def check_fields(ctx: Any, values: dict[str, Any]) -> dict[str, Any]:
    """check_path on each path-naming run setting in `values` ({"section.key": value})."""
    for key, kind in FIELD_KINDS.items():
        check_path(ctx, values.get(key), kind)
    return values


def session_allow_ok(request: Any, exposed_without_login: bool) -> bool:
    """Whether a page may add a folder: always, unless the Studio runs exposed without a login
    (--insecure), where only this machine's own browser may."""
    if not exposed_without_login:
        return True
    client = getattr(getattr(request, "client", None), "host", "") or ""
    return is_loopback(client)


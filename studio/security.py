"""The Studio as a local app, not a file server: `StudioGuard` (Host, Origin and login checks), `PathPolicy`
(the folders the page may read) and `launch_problem` (no exposed address without --auth)."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from slm_core.allowlist import AllowList
from slm_core.errors import SLMError
from slm_core.infer.guard import LocalGuard, is_loopback, plain_response
from studio.desktop.secret import SecretGate

# ---- launching --------------------------------------------------------------------------------


def launch_problem(host: str, share: bool, auth: Any, insecure: bool) -> Optional[str]:
    """Why the Studio must not start with these settings (None when it may)."""
    if auth or insecure or (is_loopback(host) and not share):
        return None
    where = "a public --share link" if share else f"--host {host}"
    return (f"refusing to serve the Studio on {where} without a login: anyone who reaches it could start "
            "training and read local files. Add --auth USER:PASSWORD, or --insecure if this network is yours alone.")


# ---- the middleware --------------------------------------------------------------------------


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


class StudioGuard(LocalGuard):
    """slm_core's local-server guard (Host and Origin checks) plus login throttling."""

    def __init__(self, app: Any, hosts: set[str], port: Optional[int] = None,
                 limiter: Optional[LoginLimiter] = None):
        super().__init__(app, hosts, port)
        self.limiter = limiter or LoginLimiter()

    async def serve(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            await self._login(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.limiter.retry_after(client)
        if wait > 0:
            await plain_response(send, 429, f"Too many failed logins: try again in {wait:.0f} s.",
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


def guarded_app(hosts: set[str], port: Optional[int], limiter: Optional[LoginLimiter] = None,
                secret: Optional[str] = None) -> Any:
    """A Gradio App (FastAPI) whose whole middleware stack, Gradio's CORS layer included, sits inside
    StudioGuard. Passed to `Blocks.launch(_app=...)`: Gradio adds its routes and middleware to it as it
    would to the app it makes itself (default_response_class as Gradio sets it). `secret`: the desktop app's
    per-launch key (studio.desktop.secret); without it every request gets 403."""
    from fastapi.responses import ORJSONResponse
    from gradio.routes import App

    class GuardedApp(App):
        def build_middleware_stack(self):  # Starlette builds this once, at the first request/lifespan
            stack = super().build_middleware_stack()
            if secret:
                stack = SecretGate(stack, secret)
            return StudioGuard(stack, hosts, port, limiter)

    return GuardedApp(default_response_class=ORJSONResponse)


# ---- paths -----------------------------------------------------------------------------------

def upload_folder() -> Path:
    """Where Gradio keeps uploaded files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


class PathPolicy(AllowList):
    """The folders the page may read: the runs folder, Gradio's uploads and the folders the person allowed.
    The engine's own allow-list, so what the page checks and what its helper processes enforce agree."""

    def __init__(self, runs_dir: str | Path, allowed: Iterable[str | Path] = ()):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        super().__init__([self.runs_dir, upload_folder().resolve()])
        for folder in allowed:
            self.allow(folder)

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


def page_error(check: Callable[..., Any], *args: Any) -> Any:
    """check(*args), its SLMError raised as a gr.Error the page shows (and API clients receive), without a
    server traceback."""
    try:
        return check(*args)
    except SLMError as error:
        import gradio as gr

        raise gr.Error(str(error), print_exception=False) from None


def check_path(ctx: Any, value: Any, kind: str = "path") -> Any:
    """The gate for every Studio event that takes a path or a run name: `value` unchanged when the page
    may read it, else an error in the page."""
    return page_error(check_value, ctx.paths, kind, value)


# The run settings (StudioContext.fields keys) that name files or folders, and how each is checked.
FIELD_KINDS = {"data.source": "data", "tokenizer.path": "path", "train.init_from": "model", "distill.teacher": "model",
               "grpo.prompts": "data"}


def check_fields(ctx: Any, values: dict[str, Any]) -> dict[str, Any]:
    """check_path on each path-naming run setting in `values` ({"section.key": value})."""
    for key, kind in FIELD_KINDS.items():
        check_path(ctx, values.get(key), kind)
    return values


# ---- URLs the server fetches -------------------------------------------------------------------

def url_origin(url: str) -> tuple[str, str, Optional[int]]:
    """(scheme, host, port) of an http(s) URL, the port made explicit."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


def check_judge_url(url: str, configured: Iterable[str] = ()) -> str:
    """`url` when the page may make the server call it: an endpoint on this machine (slm serve, Ollama, vLLM)
    or one the Studio was started with (launch.py --judge-url). Anything else would let whoever drives the
    page make this machine fetch addresses on its network."""
    url = (url or "").strip()
    scheme, host, port = url_origin(url)
    if scheme not in ("http", "https") or not host:
        raise SLMError(f"judge endpoint {url!r} must be an http:// or https:// URL, like http://127.0.0.1:8000/v1")
    if is_loopback(host) or (scheme, host, port) in {url_origin(c) for c in configured}:
        return url
    raise SLMError(f"the page may call judge endpoints on this machine only, or ones the Studio was started with: "
                   f"restart it with --judge-url {scheme}://{host}{f':{port}' if port else ''} to use this one")


def session_allow_ok(request: Any, exposed_without_login: bool) -> bool:
    """Whether a page may add a folder: always, unless the Studio runs exposed without a login
    (--insecure), where only this machine's own browser may."""
    if not exposed_without_login:
        return True
    client = getattr(getattr(request, "client", None), "host", "") or ""
    return is_loopback(client)

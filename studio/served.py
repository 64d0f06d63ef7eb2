"""`slm serve` as a managed background process of the Studio: started, found again after a page reload, measured
from its Prometheus /metrics and stopped. Each server's state is a small folder under the runs folder
(`serve-PORT/status.json`, kind "serve"), so the Runs tab lists it beside the runs with no code of its own; its
output goes to log.txt there."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from slm_core.allowlist import AllowList
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json
from slm_core.infer.guard import is_loopback
from slm_core.run import runs
from slm_core.system import pid_alive
from studio.command import shell_command
from studio.runner import REPO_ROOT
from studio.views import error_from_log

DEFAULT_PORT = 8000  # slm_core.infer.serve.DEFAULT_PORT (importing it would load torch into the Studio's process)
PREFIX = "serve-"
SERVING = "serving"  # not "running": a server must not hold the training slot (Runner.active) or its thread budget
ENGINES = ("auto", "native", "onnx")
KEY_ENV = "SLM_SERVE_API_KEY"  # the key reaches the server by environment: a command line is readable by every user
_PROCS: dict[int, subprocess.Popen] = {}  # pid → the process this Studio started, reaped by whichever page stops it
_RATES: dict[int, tuple[float, int, float]] = {}  # port → (when, completion tokens then, tokens/s since the one before)
_LOCK = threading.Lock()


def check_request(model: Optional[str], port, host: str, api_key: Optional[str], engine: str) -> tuple[int, str]:
    """(port, host) once the page's values pass `slm serve`'s own rules (loopback unless a key is given)."""
    if not model:
        raise SLMError("pick a model to serve first")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise SLMError(f"port {port!r} is not a number: use 1024-65535, e.g. {DEFAULT_PORT}") from None
    if not 1024 <= port <= 65535:
        raise SLMError(f"port {port} is outside 1024-65535: pick another, e.g. {DEFAULT_PORT}")
    host = (host or "").strip() or "127.0.0.1"
    if not (is_loopback(host) or api_key):
        raise SLMError(f"refusing to serve on {host} without an API key: anyone who reaches this address could use "
                       "the model. Set an API key, or keep the host 127.0.0.1 (this machine only)")
    if engine not in ENGINES:
        raise SLMError(f"engine {engine!r} is unknown: use {', '.join(ENGINES)}")
    return port, host


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class ServeManager:
    """The servers of one runs folder (thread-safe: every page of a Studio shares it, and a fresh one finds the
    servers an earlier one started)."""

    def __init__(self, runs_dir: str | Path, allow_list: Optional[AllowList] = None):
        self.root = Path(runs_dir)
        self.allow_list = allow_list  # the server reads only the page's folders, as a training worker does

    def folder(self, port: int) -> Path:
        return self.root / f"{PREFIX}{int(port)}"

    def start(self, model: str, port, host: str = "127.0.0.1", api_key: Optional[str] = None,
              engine: str = "auto") -> dict:
        """Launch `slm serve MODEL` in the background; its state (not yet ready: see wait_ready)."""
        api_key = (api_key or "").strip() or None
        port, host = check_request(model, port, host, api_key, engine)
        with _LOCK:
            if any(s["port"] == port for s in self.live()):
                raise SLMError(f"a server of this Studio already answers on port {port}: stop it, or pick another port")
            if not _port_free(host, port):
                raise SLMError(f"port {port} is taken on {host} by another program: pick another port")
            model_id = Path(str(model).rstrip("/")).name or "model"
            args = ["serve", str(model), "--host", host, "--port", str(port), "--engine", engine, "--name", model_id,
                    "--runs-dir", str(self.root)]
            folder = self.folder(port)
            folder.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop(KEY_ENV, None)
            if api_key:
                env[KEY_ENV] = api_key
            if self.allow_list is not None:
                env.update(self.allow_list.environ())
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            with open(folder / "log.txt", "wb") as log:  # a fresh log per start: the engine line is read from it
                log.write(f"$ {shell_command(args)}\n".encode())
                log.flush()
                process = subprocess.Popen([sys.executable, "-m", "slm_core", *args], cwd=os.getcwd(), env=env,
                                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)  # Ctrl-C in the Studio's terminal spares it
            _PROCS[process.pid] = process
            now = time.time()
            state = {"kind": "serve", "mode": "serve", "state": SERVING, "pid": process.pid, "port": port,
                     "host": host, "model": str(model), "preset": model_id, "model_id": model_id, "engine": engine,
                     "api_key_set": bool(api_key), "started_at": now, "updated_at": now, "error": None}
            atomic_write_json(folder / runs.STATUS_FILE, state)  # never the key itself
        return state

    def wait_ready(self, state: dict, timeout_s: float = 300, poll_s: float = 0.25) -> dict:
        """Until /health answers (the model is loaded before the server listens); the state with the engine the
        server reported. A server that exits first is recorded as failed and raised as its own error line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(state["pid"]):
                self._reap(state["pid"])
                log = _read(self.folder(state["port"]) / "log.txt")
                error = error_from_log(log) or "the server exited before it answered"
                self._write(state, state="failed", error=error, pid=None)
                raise SLMError(f"the server did not start: {error}")
            if _get(local_url(state) + "/health") is not None:
                return self._write(state, engine_line=engine_line(self.folder(state["port"])), ready=True)
            time.sleep(poll_s)
        raise SLMError(f"the server did not answer within {timeout_s:.0f} s; its log: "
                       f"{self.folder(state['port']) / 'log.txt'}")

    def live(self) -> list[dict]:
        """Every server of this runs folder still serving, newest first; one whose process ended is recorded as
        stopped (or failed, with its log's error line) on the way."""
        found = []
        for folder in sorted(self.root.glob(f"{PREFIX}*")):
            state = runs.read_json(folder / runs.STATUS_FILE, {}) or {}
            if state.get("kind") != "serve" or state.get("state") != SERVING:
                continue
            if state.get("pid") and _is_server(state["pid"]):
                found.append(state)
                continue
            code = self._reap(state.get("pid"))
            log = _read(folder / "log.txt")
            crashed = code not in (None, 0, -signal.SIGTERM, -signal.SIGINT) or "Traceback" in log or "\nerror:" in log
            error = error_from_log(log) if crashed and not state.get("stopping") else None
            self._write(state, state="failed" if error else "stopped", error=error, pid=None)
        return sorted(found, key=lambda s: s.get("started_at") or 0, reverse=True)

    def find(self, port) -> Optional[dict]:
        return next((s for s in self.live() if str(s["port"]) == str(port)), None)

    def stop(self, port, timeout_s: float = 20) -> dict:
        """SIGTERM to the server's process group (it finishes what it streams, then exits); SIGKILL after
        `timeout_s`. The state, now stopped."""
        state = self.find(port)
        if state is None:
            raise SLMError(f"no server of this Studio answers on port {port}: nothing to stop")
        state = self._write(state, stopping=True)
        pid = int(state["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            self._reap(pid)
            time.sleep(0.1)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        self._reap(pid, wait=True)
        _RATES.pop(int(state["port"]), None)
        return self._write(state, state="stopped", pid=None, error=None)

    def metrics(self, state: dict) -> Optional[dict]:
        """requests (completions and chat answered), completion and prompt tokens so far, tokens_per_sec since
        the previous reading (of any page); None while the server does not answer."""
        text = _get(local_url(state) + "/metrics")
        if text is None:
            return None
        values = parse_metrics(text)
        port, now, tokens = int(state["port"]), time.monotonic(), values["completion_tokens"]
        with _LOCK:
            when, before, rate = _RATES.get(port, (now, tokens, 0.0))
            if now - when >= 1.0:  # two pages reading within a second share the last figure
                rate = max(0.0, (tokens - before) / (now - when))
                _RATES[port] = (now, tokens, rate)
            elif port not in _RATES:
                _RATES[port] = (now, tokens, 0.0)
        return {**values, "tokens_per_sec": rate}

    def _write(self, current: dict, **changes) -> dict:
        current = {**current, **changes, "updated_at": time.time()}
        atomic_write_json(self.folder(current["port"]) / runs.STATUS_FILE, current)
        return current

    @staticmethod
    def _reap(pid, wait: bool = False) -> Optional[int]:
        """The exit code of a server this Studio started once it has ended (reaped: no zombie), else None."""
        process = _PROCS.get(int(pid)) if pid else None
        if process is None:
            return None
        try:
            process.wait(10) if wait else process.poll()
        except subprocess.TimeoutExpired:
            return None
        if process.returncode is not None:
            _PROCS.pop(int(pid), None)
        return process.returncode


def _is_server(pid) -> bool:
    """Alive and still an `slm serve` (after a reboot the pid may belong to another program)."""
    if not pid_alive(pid):
        return False
    try:
        command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (macOS): the pid alone
        return True
    return b"slm_core" in command and b"serve" in command


_SERIES = re.compile(r'^slm_(requests_total|prompt_tokens_total|completion_tokens_total)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text: str) -> dict:
    """The server's Prometheus text → requests (completions and chat, any status), prompt and completion tokens."""
    out = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for line in text.splitlines():
        match = _SERIES.match(line.strip())
        if not match:
            continue
        name, labels, value = match.groups()
        if name == "requests_total":
            if labels and "completions" in labels:
                out["requests"] += int(float(value))
        else:
            out[name.replace("_total", "")] += int(float(value))
    return out


def local_url(state: dict) -> str:
    """Where this machine reaches the server (loopback even when it listens on every address)."""
    host = state["host"]
    if host in ("0.0.0.0", "::") or not is_loopback(host):
        host = "127.0.0.1" if ":" not in host else "[::1]"
    return f"http://{host}:{state['port']}"


def public_url(state: dict) -> str:
    """The base URL clients use: the bound address (this machine's name when it listens on every address)."""
    host = state["host"]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{state['port']}/v1"


def engine_line(folder: Path) -> str:
    """What the server said it decodes with ('native torch (fp32, 8 slots)', and why it chose it)."""
    lines = _read(folder / "log.txt").splitlines()
    served = next((line for line in lines if line.startswith("serving '")), "")
    match = re.search(r"\((.*)\) on http", served)
    chose = next((line for line in lines if line.startswith("engine: ")), "")  # engine_choice.Choice.line
    why = chose[chose.index("(") + 1:-1] if chose.endswith(")") else ""  # "engine: LABEL (why)"
    return (match.group(1) if match else "") + (f"; {why}" if why else "")


def snippets(state: dict, api_key: Optional[str] = None) -> tuple[str, str]:
    """(Python with the official openai client, a curl line) for this server; the key as typed on this page, else
    a placeholder (the key is never written to disk, so a reloaded page cannot show it)."""
    url, model = public_url(state), state.get("model_id") or "model"
    key = api_key or ("YOUR_API_KEY" if state.get("api_key_set") else "none")
    python = (f'from openai import OpenAI\n\nclient = OpenAI(base_url="{url}", api_key="{key}")\n'
              f'reply = client.chat.completions.create(\n    model="{model}",\n'
              f'    messages=[{{"role": "user", "content": "Once upon a time"}}],\n    max_tokens=64,\n)\n'
              f'print(reply.choices[0].message.content)\n')
    auth = f' -H "Authorization: Bearer {key}"' if state.get("api_key_set") else ""
    curl = (f"curl {url}/chat/completions -H 'Content-Type: application/json'{auth} -d "
            f"'{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Once upon a time\"}}], "
            f"\"max_tokens\": 64}}'")
    return python, curl


def _get(url: str, timeout_s: float = 2.0) -> Optional[str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own loopback server
            return response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""

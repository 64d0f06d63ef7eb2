"""slm_core's torch-using calls the page needs (the Model tab's estimate, the Data tab's preview and
tokenizing) run in a helper process that starts on demand and exits when idle.

Why not in the server: importing torch costs the Gradio server ~200 MB of RSS for as long as it
lives, and a 1.5 s refresh of a run that trains for hours should not carry that. The helper holds
torch only while someone edits a model or prepares data. One JSON object per line each way; a
call's progress (tqdm bars inside slm_core) comes back as {"progress": ...} lines before its result.

    server: Helper().call("describe", {...}, on_progress=None) -> result (SLMError passes through)
    helper: python -m studio.helper   (reads requests on stdin)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from slm_core.errors import SLMError

REPO_ROOT = Path(__file__).resolve().parent.parent
IDLE_S = 90.0


class Helper:
    """One helper process, started by the first call and stopped after `idle_s` without calls.
    `module` is what runs in it (`python -m module`): this one, or one that adds to FUNCTIONS."""

    def __init__(self, idle_s: float = IDLE_S, module: str = "studio.helper"):
        self.idle_s, self.module = idle_s, module
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def call(self, fn: str, args: dict, on_progress: Optional[Callable[[dict], None]] = None) -> Any:
        with self._lock:
            if self._timer:
                self._timer.cancel()
            proc = self._ensure()
            try:
                proc.stdin.write(json.dumps({"fn": fn, "args": args}) + "\n")
                proc.stdin.flush()
                return self._answer(proc, on_progress)
            finally:
                self._timer = threading.Timer(self.idle_s, self._close_if_idle)
                self._timer.daemon = True
                self._timer.start()

    def _answer(self, proc: subprocess.Popen, on_progress) -> Any:
        for line in proc.stdout:
            message = json.loads(line)
            if "progress" in message:
                if on_progress:
                    on_progress(message["progress"])
                continue
            if "error" in message:
                raise SLMError(message["error"])
            if "crash" in message:
                raise RuntimeError(message["crash"])
            return message["result"]
        self._proc = None
        raise SLMError(f"the helper process ended unexpectedly (exit code {proc.wait()}); try again")

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen([sys.executable, "-m", self.module], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                          cwd=os.getcwd())
        return self._proc

    def _close_if_idle(self) -> None:
        if self._lock.acquire(blocking=False):  # a call in flight keeps the helper
            try:
                self.close()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Stop the helper (it starts again on the next call)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.stdin.close()  # the helper's loop ends at end of input
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


# ---- inside the helper process ----------------------------------------------------------------

def _describe(model: dict, **kwargs) -> dict:
    from slm_core.config import LoRAConfig, RunConfig
    from slm_core.estimate import describe

    config = RunConfig.from_dict({"model": model}).model
    lora = kwargs.pop("lora", None)
    return describe(config, lora=LoRAConfig(**lora) if lora else None, **kwargs)


def _preview(data: dict, n: int = 5) -> dict:
    from slm_core.config import DataConfig
    from slm_core.data import data_summary, preview

    cfg = DataConfig(**data)
    return {"summary": data_summary(cfg), "texts": preview(cfg, n=n)}


def _tokenize(config: dict) -> dict:
    from slm_core.config import RunConfig
    from slm_core.data import prepare_data

    started = time.perf_counter()
    data = prepare_data(RunConfig.from_dict(config), progress=True, require_windows=False)
    return {"train_tokens": data.train_tokens, "val_tokens": data.val_tokens, "n_chars": data.n_chars,
            "n_vocab": data.tokenizer.n_vocab, "kind": data.tokenizer.kind, "cache_dir": str(data.cache_dir),
            "seconds": time.perf_counter() - started}


FUNCTIONS: dict[str, Callable[..., Any]] = {"describe": _describe, "preview": _preview, "tokenize": _tokenize}


def _report_tqdm(send: Callable[[dict], None]) -> None:
    """Forward slm_core's tqdm bars as progress messages (at most ~4 a second)."""
    import tqdm.std

    original = tqdm.std.tqdm.update
    last = [0.0]

    def update(bar, n=1):
        result = original(bar, n)
        if bar.disable:  # a bar its maker turned off (torch's ONNX exporter does) has no desc
            return result
        now = time.monotonic()
        if now - last[0] > 0.25 or (bar.total and bar.n >= bar.total):
            last[0] = now
            send({"progress": {"n": bar.n, "total": bar.total, "desc": bar.desc or ""}})
        return result

    tqdm.std.tqdm.update = update


def main() -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout (Python or native code) must not mix with the protocol
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        out.write(json.dumps(message, default=float) + "\n")
        out.flush()

    _report_tqdm(send)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            send({"result": FUNCTIONS[request["fn"]](**request["args"])})
        except SLMError as error:
            send({"error": str(error)})
        except Exception as error:  # noqa: BLE001 - the server shows it; the helper lives on
            send({"crash": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()

"""The onnxruntime-genai export that engine choice "auto" builds in the background for a run that has none:
`slm export RUN --format onnx` in a process of its own (in the serving process it would hold the GIL the decode
loop needs for the ~10-60 s it runs), started in a session of its own so that it outlives a one-shot `slm generate`.
Its state lives beside the export, in <run>/export/onnx-build.json (pid, checkpoint, building | done | failed: why),
so every process — a server, the Studio's Chat, the next `slm generate` — sees one build per checkpoint, and a failed
one is not retried until the checkpoint changes. Its output goes to <run>/export/onnx-build.log.

    python -m slm_core.infer.genai_build RUN TAG CHECKPOINT   (what start() runs: the export, then its state)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, read_state
from slm_core.system import pid_alive

STATE_FILE = "onnx-build.json"
LOG_FILE = "onnx-build.log"
ENV = "SLM_BACKGROUND_EXPORT"  # "0": never build in the background (the test suite; exports made by hand)
TAGS = ("best", "latest")  # the checkpoints `slm export --checkpoint` takes
_LOCK = threading.Lock()
_CHILDREN: dict[str, subprocess.Popen] = {}  # builds this process started, by run: polled, so they are reaped


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def log_path(folder: Path) -> Path:
    return Path(folder) / "export" / LOG_FILE


def status(folder: Path, checkpoint: str) -> str:
    """'none' (no build of this checkpoint yet), 'building', 'done' or 'failed: why'."""
    state = _read(folder)
    if state.get("checkpoint") != checkpoint:
        return "none"
    said = str(state.get("state", "none"))
    if said != "building":
        return said
    child = _CHILDREN.get(str(folder))
    pid = state.get("pid")
    alive = child.poll() is None if child is not None and child.pid == pid else \
        isinstance(pid, int) and pid > 0 and pid_alive(pid)
    if alive:
        return "building"
    return status_after_exit(folder, checkpoint)


def status_after_exit(folder: Path, checkpoint: str) -> str:
    """The state once the build process is gone: what it wrote, or failed (killed before it could say)."""
    state = _read(folder)
    said = str(state.get("state", "none")) if state.get("checkpoint") == checkpoint else "none"
    return said if said != "building" else f"failed: the build process ended early (see {log_path(folder)})"


def start(folder: Path, tag: str, checkpoint: str) -> str:
    """Start the build of `checkpoint` unless one runs or failed; its status. (Called with no fresh export: 'done'
    means it was deleted since, so it is built again.)"""
    folder = Path(folder)
    with _LOCK:
        now = status(folder, checkpoint)
        if now not in ("none", "done"):
            return now
        log = log_path(folder)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as out:
                child = subprocess.Popen([sys.executable, "-m", "slm_core.infer.genai_build", str(folder), tag,
                                          checkpoint], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:  # a read-only run folder: no export, said once per checkpoint
            return f"failed: {error}"
        _CHILDREN[str(folder)] = child
        _write(folder, {"pid": child.pid, "checkpoint": checkpoint, "tag": tag, "state": "building",
                        "started": time.time()})
        return "building"


def wait(folder: Path, checkpoint: str, timeout: float = 600, poll_s: float = 0.5) -> str:
    """Until the build of `checkpoint` is no longer running (or `timeout`); its status then."""
    deadline = time.monotonic() + timeout
    while True:
        now = status(folder, checkpoint)
        if now != "building" or time.monotonic() >= deadline:
            return now
        time.sleep(poll_s)


def _build(folder: Path, tag: str, checkpoint: str) -> int:
    """The build process: `slm export` (a process of its own: slm_core.infer may not import slm_core.post), then
    the state it ends in."""
    state = {"pid": os.getpid(), "checkpoint": checkpoint, "tag": tag, "state": "building", "started": time.time()}
    _write(folder, state)
    command = [sys.executable, "-m", "slm_core", "export", str(folder), "--format", "onnx", "--checkpoint", tag,
               "--overwrite"]
    print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(result.stdout + result.stderr)
    lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
    why = (lines[-1][:300] if lines else f"exit code {result.returncode}")
    state.update(state="done" if result.returncode == 0 else f"failed: {why}", ended=time.time())
    _write(folder, state)
    return result.returncode


def _read(folder: Path) -> dict:
    try:
        state = read_state(Path(folder) / "export" / STATE_FILE)
    except SLMError:  # damaged: moved aside; tried again
        return {}
    return state if isinstance(state, dict) else {}


def _write(folder: Path, state: dict) -> None:
    try:
        atomic_write_json(Path(folder) / "export" / STATE_FILE, state)
    except OSError:  # a read-only run folder: the build itself fails and says so in its log
        pass


if __name__ == "__main__":
    sys.exit(_build(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))

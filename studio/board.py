"""TensorBoard over the runs directory, started once per Studio on a loopback port and stopped when the Studio
exits, however it ends."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.system import pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Board:
    """One TensorBoard process over a runs directory (thread-safe; started on demand)."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self._proc: Optional[subprocess.Popen] = None
        self.url: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        exe = shutil.which("tensorboard")
        head = [exe] if exe else [sys.executable, "-m", "tensorboard.main"]
        board = head + ["--logdir", str(self.logdir), "--host", "127.0.0.1", "--port", str(port)]
        return [sys.executable, "-m", "studio.board", str(os.getpid()), "--", *board]

    def start(self, timeout: float = 60.0) -> str:
        """The URL of the running TensorBoard, starting it first if needed."""
        with self._lock:
            if self.running and self.url:
                return self.url
            if importlib.util.find_spec("tensorboard") is None:
                raise SLMError("TensorBoard is not installed: pip install tensorboard, then press the button again")
            port = _free_port()
            self.logdir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen(self.command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=env)
            atexit.register(self.stop)
            self.url = f"http://127.0.0.1:{port}/"
            self._wait(timeout)
            return self.url

    def _wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise SLMError(f"TensorBoard exited at once (code {self._proc.returncode}); try "
                               f"`tensorboard --logdir {self.logdir}` in a shell to see why")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise SLMError(f"TensorBoard did not answer within {timeout:.0f} s; it may still be starting: press again")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str]) -> int:
    """The watchdog: run COMMAND until it exits or the process STUDIO_PID is gone (then stop it)."""
    parent, command = int(argv[0]), argv[argv.index("--") + 1:]
    terminated: list = []  # the handler only flags: stopping inside it could wait on a lock this thread holds
    # Before the command starts: a SIGTERM that came between the two killed the watchdog and left its command running
    signal.signal(signal.SIGTERM, lambda *a: terminated.append(True))
    child = subprocess.Popen(command)

    def stop(*_):
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()

    while child.poll() is None:
        if terminated or not pid_alive(parent):
            stop()
            break
        time.sleep(0.5)
    return 0 if terminated else child.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

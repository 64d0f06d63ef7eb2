"""One `slm-studio` at a time: the first writes {port, secret, pid} to a file in the user's state dir and
listens on a loopback socket; a second one finds the file, sends the secret and "raise", and exits."""

from __future__ import annotations

import hmac
import json
import os
import socket
import threading
from pathlib import Path
from typing import Callable, Optional

from slm_core.fsio import atomic_write_json

INSTANCE_FILE = "instance.json"


def state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("slm-studio", appauthor=False))


class Instance:
    """The running app's control socket. `on_raise` is called (in the listener thread) when another launch
    asks this one to come to the front."""

    def __init__(self, secret: str, on_raise: Callable[[], None], folder: Optional[Path] = None):
        self.secret, self.on_raise = secret, on_raise
        self.path = Path(folder or state_dir()) / INSTANCE_FILE
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"port": self.port, "secret": secret, "pid": os.getpid()})
        if os.name == "posix":
            os.chmod(self.path, 0o600)  # the secret drives the window: this user's only
        threading.Thread(target=self._serve, daemon=True, name="slm-studio-instance").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(2)
                try:
                    line = conn.makefile("rb").readline(512).decode("utf-8", "replace").split()
                except OSError:
                    continue
                if len(line) == 2 and hmac.compare_digest(line[0].encode(), self.secret.encode()) \
                        and line[1] == "raise":
                    self.on_raise()
                    conn.sendall(b"ok\n")

    def close(self) -> None:
        self.sock.close()
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass


def ask_running(folder: Optional[Path] = None, timeout_s: float = 3.0) -> bool:
    """True when another instance answered "ok" to "raise" (it now shows its window); False when none runs
    (no file, a stale file, or nothing listening)."""
    path = Path(folder or state_dir()) / INSTANCE_FILE
    try:
        info = json.loads(path.read_text())
        with socket.create_connection(("127.0.0.1", int(info["port"])), timeout=timeout_s) as conn:
            conn.sendall(f"{info['secret']} raise\n".encode())
            return conn.makefile("rb").readline(16).strip() == b"ok"
    except (OSError, ValueError, KeyError, TypeError):
        return False

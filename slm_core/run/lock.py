"""One writer per run: an OS file lock (flock) on `<run>/run.lock`, held by the training process with its pid
and host inside; `holder` says who holds a run. No torch."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError

LOCK_FILE = "run.lock"
# A reader's probe (`holder`) holds the lock for microseconds; a writer retries that long before refusing.
ACQUIRE_RETRY_S = 1.0


class RunLock:
    """Exclusive writer lock on a run directory. Use as a context manager or acquire()/release()."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self, wait_s: float = ACQUIRE_RETRY_S) -> "RunLock":
        """Take the lock, retrying for `wait_s` (0: a reader's single try); SLMError naming the holder if taken."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                who = holder(self.run_dir) or {}
                by = f"pid {who['pid']} on {who.get('host', '?')}" if "pid" in who else \
                    f"another process ({self.path} names none: being written, or damaged)"
                raise SLMError(f"run '{self.run_dir.name}' is being written by {by}; stop it first or pick another "
                               "--name") from None
            except OSError as error:  # a filesystem without locks (some network mounts): run unguarded
                os.close(fd)
                print(f"warning: cannot lock {self.path} ({error}); a second writer on this run would not be "
                      f"noticed", file=sys.stderr)
                return self
        # Written in place (not renamed over): the lock lives on this inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.time()}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (its content is only a hint)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: str | Path) -> Optional[dict]:
    """{"pid", "host", "since"} of the live process holding the run's lock, or None if nobody does.

    Probes with a non-blocking shared lock, released at once. In the holder's own process the probe
    also fails (flock locks belong to open files, not processes), so it reports itself as holder.
    The record is only a hint ({} when it does not parse); unlike other state files a damaged one is never
    moved aside: the lock lives on this inode, and a holder rewrites the record in place when it takes it.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_self(who: dict) -> bool:
    """Whether a holder record names this very process."""
    return who.get("pid") == os.getpid() and who.get("host") == socket.gethostname()

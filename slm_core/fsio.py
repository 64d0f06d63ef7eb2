"""One way to write a file: to a temporary sibling, flushed to disk, then renamed over the target, so a
reader (or a process killed mid-write) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from slm_core.errors import SLMError


def atomic_write_bytes(path: str | Path, payload: bytes | memoryview) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit(tmp: str | Path, path: str | Path) -> None:
    """Rename a finished temporary file or folder over `path`, durably: the file's bytes reach the disk
    before the rename, and the rename before this returns."""
    if Path(tmp).is_file():
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def read_state(path: str | Path) -> Any:
    """A JSON state file's contents (None when there is none). One that does not parse is moved aside to
    `<name>.damaged-<time>`, never overwritten, and named in an SLMError, so the next write starts afresh."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(path, aside)
        raise SLMError(f"{path} was damaged (not JSON) and is kept as {aside.name}; a fresh one is started, "
                       "so re-enter what it held") from None


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (POSIX; a no-op where directories can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

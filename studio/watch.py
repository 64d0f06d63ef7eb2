"""Reading a run directory cheaply and often: the growing jsonl files from the offset reached last time, and
`signature`, a fingerprint that says when nothing changed."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from slm_core.run import runs

LOG_TAIL_BYTES = 32_000


class JsonlCache:
    """Rows of append-only JSONL files, re-reading only the bytes added since the last call. Keeps the
    `max_files` most recently read files (a long-lived server opens many runs; each keeps its rows)."""

    def __init__(self, max_files: int = 32) -> None:
        self._files: OrderedDict[str, tuple[int, int, list[dict]]] = OrderedDict()  # path → (inode, offset, rows)
        self._lock = threading.Lock()
        self.max_files = max_files

    def rows(self, path: str | Path) -> list[dict]:
        key = str(path)
        try:
            stat = os.stat(key)
        except FileNotFoundError:
            self._files.pop(key, None)
            return []
        with self._lock:
            inode, offset, rows = self._files.get(key, (stat.st_ino, 0, []))
            if inode != stat.st_ino or stat.st_size < offset:  # replaced or truncated: start over
                offset, rows = 0, []
            if stat.st_size > offset:
                offset, new = _read_complete_lines(key, offset)
                rows = rows + new
            self._files[key] = (stat.st_ino, offset, rows)
            self._files.move_to_end(key)
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
            return rows

    def forget(self, prefix: str | Path) -> None:
        with self._lock:
            for key in [k for k in self._files if k.startswith(str(prefix))]:
                del self._files[key]


def _read_complete_lines(path: str, offset: int) -> tuple[int, list[dict]]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1  # only whole lines; a half-written one is read next time
    rows = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return offset + end, rows


CACHE = JsonlCache()


def metrics(run_dir: str | Path) -> list[dict]:
    return CACHE.rows(Path(run_dir) / "metrics.jsonl")


def samples(run_dir: str | Path) -> list[dict]:
    return CACHE.rows(Path(run_dir) / "samples.jsonl")


def log_text(run_dir: str | Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    path = Path(run_dir) / "log.txt"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.seek(max(0, handle.tell() - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[-1] if size else text  # drop the partial first line


def signature(run_dir: Optional[str | Path]) -> tuple:
    """Changes whenever anything the Train tab shows changes."""
    if not run_dir:
        return ()
    out = []
    for name in ("status.json", "metrics.jsonl", "samples.jsonl", "log.txt"):
        try:
            stat = os.stat(Path(run_dir) / name)
            out.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def runs_signature(root: str | Path) -> tuple:
    """Changes whenever a row of the runs table may change: a run added or removed, a status or a report card
    written. A stat() per run, so a page may ask every few seconds."""
    out = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return ()
    for entry in entries:
        if not entry.is_dir():
            continue
        stamps = []
        for name in ("status.json", "evals"):
            try:
                stat = os.stat(os.path.join(entry.path, name))
                stamps.append((stat.st_size, stat.st_mtime_ns))
            except FileNotFoundError:
                stamps.append(None)
        out.append((entry.name, *stamps))
    return tuple(out)


def status(run_dir: str | Path) -> dict:
    return runs.read_status(run_dir)

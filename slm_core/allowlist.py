"""The folders a process may open user-named files from, when a page rather than a person at a shell names
them. A person's own `slm` command is unconfined; the Studio confines the processes that work for its page
(its helpers, the runs it launches) to the runs folder, the uploads and the folders the person allowed.

The check sits in the engine's entry points that turn a user's text into a file to open (data sources,
model and tokenizer folders, task and prompt files), so a path is refused whatever its name or suffix.
Paths are resolved first: a symlink inside an allowed folder that points out of it is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional

from slm_core.errors import SLMError

ENV_VAR = "SLM_ALLOWED_ROOTS"  # os.pathsep-separated folders: how a launching process confines its child


class AllowList:
    """A growing set of folders; a path is allowed when, resolved, it lies in one of them."""

    def __init__(self, roots: Iterable[str | Path] = ()):
        self._roots: list[Path] = []
        self._lock = threading.Lock()
        for root in roots:
            self._add(Path(root).expanduser().resolve())

    @property
    def roots(self) -> list[Path]:
        with self._lock:
            return list(self._roots)

    def _add(self, folder: Path) -> None:
        with self._lock:
            if folder not in self._roots:
                self._roots.append(folder)

    def allow(self, folder: str | Path) -> Path:
        """Add a folder (or a file's folder) for the rest of this session."""
        path = Path(str(folder).strip()).expanduser().resolve()
        if path.is_file():
            path = path.parent
        if path == Path(path.anchor):
            raise SLMError("the whole file system cannot be allowed: name a folder that holds your data")
        if not path.is_dir():
            raise SLMError(f"{path} is not a folder")
        self._add(path)
        return path

    def allows(self, path: str | Path) -> bool:
        resolved = Path(path).expanduser().resolve()
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def check(self, path: str | Path) -> Path:
        """`path` resolved, or SLMError when it lies outside the allowed folders. The message names the path
        and its folder, never what the file holds."""
        resolved = Path(path).expanduser().resolve()
        if not self.allows(resolved):
            folder = resolved if resolved.is_dir() else resolved.parent
            raise SLMError(f"{path} is outside the folders the Studio reads (the runs folder, uploads and folders "
                           f"you allowed): allow {folder} in the page, or start the Studio with --allow-path {folder}")
        return resolved

    def environ(self) -> dict[str, str]:
        """The environment entry that confines a child process to these folders."""
        return {ENV_VAR: os.pathsep.join(str(root) for root in self.roots)}


_ACTIVE: contextvars.ContextVar[Optional[AllowList]] = contextvars.ContextVar("slm_allow_list", default=None)


def _from_environment() -> Optional[AllowList]:
    value = os.environ.get(ENV_VAR)
    return None if value is None else AllowList(p for p in value.split(os.pathsep) if p)


_INHERITED = _from_environment()  # read once: the launching process decided, nothing in this one changes it


def active() -> Optional[AllowList]:
    """The allow-list in force here: one set by `confined`, else the one this process was started with."""
    return _ACTIVE.get() or _INHERITED


@contextlib.contextmanager
def confined(roots: Optional[Iterable[str | Path]]) -> Iterator[None]:
    """Within the block, user-named files open only under `roots` (None: no change)."""
    if roots is None:
        yield
        return
    token = _ACTIVE.set(AllowList(roots))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def refuses(path: str | Path) -> bool:
    """Whether `readable(path)` would refuse it (without raising), e.g. to read a refused name as a Hub id."""
    allow_list = active()
    return allow_list is not None and not allow_list.allows(path)


def readable(path: str | Path) -> Path:
    """The gate before opening a file or folder a user named: `path` unchanged when nothing confines this
    process, else refused (SLMError) unless it lies in an allowed folder."""
    allow_list = active()
    if allow_list is not None:
        allow_list.check(path)
    return Path(path)

"""The window's size and position between launches, in the user's config dir (platformdirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, read_state

DEFAULT = {"width": 1400, "height": 900, "x": None, "y": None}


def geometry_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("slm-studio", appauthor=False)) / "window.json"


def load(path: Optional[Path] = None) -> dict:
    """The saved geometry, or the default when none was saved or the file is damaged (moved aside)."""
    try:
        saved = read_state(path or geometry_file())
    except SLMError:
        saved = None
    out = dict(DEFAULT)
    if isinstance(saved, dict):
        for key in DEFAULT:
            if isinstance(saved.get(key), int) and (key in ("x", "y") or saved[key] >= 200):
                out[key] = saved[key]
    return out


def save(geometry: dict, path: Optional[Path] = None) -> None:
    path = path or geometry_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {k: geometry.get(k) for k in DEFAULT})

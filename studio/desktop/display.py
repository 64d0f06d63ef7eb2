"""Whether a window can open here at all (an SSH session or a server has no display)."""

from __future__ import annotations

import sys
from typing import Mapping, Optional

NO_DISPLAY = ("slm-studio: no display found (DISPLAY and WAYLAND_DISPLAY are unset); "
              "run `python launch.py` and open http://127.0.0.1:7860 in a browser instead")


def display_problem(environ: Mapping[str, str], platform: str = sys.platform) -> Optional[str]:
    """The one-line message when there is no display, else None. macOS and Windows always have one."""
    if not platform.startswith("linux") and "bsd" not in platform:
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    return NO_DISPLAY

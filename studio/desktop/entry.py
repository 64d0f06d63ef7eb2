"""`slm-studio --install-desktop-entry`: a freedesktop .desktop file and the project's icon under the user's
XDG data dir, so the Studio appears in the app menu on Linux."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

from slm_core.fsio import atomic_write_text

ICON = Path(__file__).with_name("icon.svg")
APP_ID = "slm-studio"


def launcher_command() -> str:
    """The command the menu runs: the installed console script, else this Python running the module."""
    script = shutil.which("slm-studio")
    if script:
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m studio.desktop"


def desktop_file(exec_line: str) -> str:
    return "\n".join([
        "[Desktop Entry]", "Type=Application", "Name=SLM Studio",
        "Comment=Train, fine-tune and chat with small language models", f"Exec={exec_line}",
        f"Icon={APP_ID}", "Terminal=false", "Categories=Development;Science;", "StartupWMClass=slm-studio", ""])


def install(data_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """Write the entry and the icon; returns their paths."""
    import platformdirs

    data_dir = Path(data_dir or platformdirs.user_data_dir(appauthor=False, roaming=False))
    entry = data_dir / "applications" / f"{APP_ID}.desktop"
    icon = data_dir / "icons" / "hicolor" / "scalable" / "apps" / f"{APP_ID}.svg"
    for path in (entry, icon):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(icon, ICON.read_text(encoding="utf-8"))
    atomic_write_text(entry, desktop_file(launcher_command()))
    return entry, icon

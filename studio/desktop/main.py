"""`slm-studio`: the console script. Checks what can be checked without the window libraries (the display,
another instance, the desktop extra) before importing them."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any, Callable, Optional, Sequence

from studio.desktop.display import display_problem

MISSING = ("slm-studio needs the desktop extra: pip install -e \".[desktop]\" "
           "(or run `python launch.py` and use a browser)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slm-studio", description="The SLM Studio in its own window.")
    parser.add_argument("--runs-dir", default=None, help="where runs live (default: $SLM_RUNS_DIR or ./runs)")
    parser.add_argument("--install-desktop-entry", action="store_true",
                        help="add SLM Studio to the app menu (a freedesktop .desktop file and icon) and exit")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, on_loaded: Optional[Callable[[Any, Any], None]] = None) -> int:
    """`on_loaded(window, demo)`: see studio.desktop.window.run_window (a test or benchmark driving the window)."""
    args = parse_args(argv)
    if args.install_desktop_entry:
        from studio.desktop.entry import install

        entry, icon = install()
        print(f"wrote {entry} and {icon}")
        return 0
    problem = display_problem(os.environ)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from studio.desktop.instance import ask_running

    if ask_running():
        print("slm-studio is already open: its window was brought to the front")
        return 0
    if any(importlib.util.find_spec(name) is None for name in ("webview", "PySide6", "desktop_notifier")):
        print(MISSING, file=sys.stderr)
        return 2
    from studio.desktop.window import run_window

    return run_window(args.runs_dir, on_loaded)


def entry_point() -> None:
    sys.exit(main())

"""The window itself: the Studio's server on a free loopback port behind this launch's secret, a pywebview
window on it (Qt WebEngine on Linux), notifications for runs, and the close question while a run trains."""

from __future__ import annotations

import gc
import os
import socket
import sys
from typing import Any, Callable, Optional

from studio.desktop import geometry
from studio.desktop.api import DesktopApi, pywebview_dialog
from studio.desktop.instance import Instance
from studio.desktop.notify import Notifier, RunWatcher
from studio.desktop.run_open import show_run_js
from studio.desktop.secret import first_url, new_secret

MARK_DESKTOP = "document.documentElement.classList.add('slm-desktop')"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keep_or_stop_active_run(runner: Any, confirm: Callable[[str, str], bool]) -> Optional[str]:
    """The window closes while a run trains: `confirm(title, text)` asks whether to keep it training in the
    background (it is a process of its own) or stop it (it saves a checkpoint first). Returns the run asked
    about, None when none trains (nothing is asked)."""
    active = runner.active()
    if active and not confirm("A run is training", f"Run {active} is training. Keep it training in the "
                                                   "background? (Cancel stops it; it saves a checkpoint first.)"):
        runner.request(active, "stop")
    return active


def run_window(runs_dir: Optional[str] = None, on_loaded: Optional[Callable[[Any, Any], None]] = None) -> int:
    """Open the window and serve the Studio in it until the window closes. `on_loaded(window, demo)` runs (in
    a thread of its own) once the page has loaded: how a driver program reads or works the real window."""
    if getattr(os, "geteuid", lambda: 1)() == 0:  # Chromium's sandbox refuses root (containers)
        os.environ.setdefault("QTWEBENGINE_CHROMIUM_FLAGS", "--no-sandbox")
    import webview

    from studio.app import build_app, launch

    secret, port = new_secret(), free_port()
    demo = build_app(runs_dir)
    # _frontend=False: Gradio would probe "/" without the key, get 403 and refuse to start
    launch(demo, port=port, secret=secret, prevent_thread_lock=True, quiet=True, _frontend=False)
    saved = geometry.load()
    window = webview.create_window("SLM Studio", first_url(port, secret), width=saved["width"],
                                   height=saved["height"], x=saved["x"], y=saved["y"], min_size=(800, 600))
    api = DesktopApi(demo.studio.paths, pywebview_dialog(window))
    window.expose(api.browse)

    def to_front() -> None:
        window.restore()
        window.show()
        window.on_top = True
        window.on_top = False

    def show_run(name: str) -> None:
        to_front()
        window.evaluate_js(show_run_js(name))  # the Runs tab with that run open (studio.desktop.run_open)

    instance = Instance(secret, to_front)
    watcher = RunWatcher(demo.studio.runs_dir, Notifier(show_run).send)
    watcher.start()

    def on_closing() -> bool:
        geometry.save({"width": window.width, "height": window.height, "x": window.x, "y": window.y})
        keep_or_stop_active_run(demo.studio.runner, window.create_confirmation_dialog)
        return True

    window.events.loaded += lambda: window.evaluate_js(MARK_DESKTOP)
    if on_loaded is not None:
        window.events.loaded += lambda: on_loaded(window, demo)
    window.events.closing += on_closing
    try:
        webview.start(gui="qt" if sys.platform.startswith("linux") else None)
    finally:
        watcher.stop()
        instance.close()
        demo.close()
        # The process ends next. Python's exit-time collection over the server's heap kept it alive ~10 s after
        # the window had gone (2 loaded cores); frozen, what is left is freed by the OS at once.
        gc.freeze()
    return 0

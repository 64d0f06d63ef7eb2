"""The window itself: the Studio's server on a free loopback port behind this launch's secret, a pywebview
window on it (Qt WebEngine on Linux), notifications for runs, and the close question while a run trains."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Optional

from slm_core.fsio import atomic_write_json
from studio.desktop import geometry
from studio.desktop.api import DesktopApi, pywebview_dialog
from studio.desktop.instance import Instance
from studio.desktop.notify import Notifier, RunWatcher
from studio.desktop.run_open import show_run_js
from studio.desktop.secret import first_url, new_secret

MARK_DESKTOP = "document.documentElement.classList.add('slm-desktop')"
TAB_TITLES = "Array.from(document.querySelectorAll('[role=tab]')).map(t => t.textContent.trim())"
# SLM_STUDIO_PROBE=<file>: once the page shows its tabs, write them (and the seconds since start) there and
# close: how tests and benchmarks read the real window's DOM through pywebview's JavaScript bridge.
PROBE_ENV = "SLM_STUDIO_PROBE"
VISIBLE_BROWSE = ("Array.from(document.querySelectorAll('.slm-browse')).filter(b => getComputedStyle(b).display "
                  "!== 'none').length + '/' + document.querySelectorAll('.slm-browse').length")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _probe(window, path: str, started: float) -> None:
    for _ in range(600):
        tabs = window.evaluate_js(TAB_TITLES) or []
        if tabs:
            atomic_write_json(path, {"tabs": tabs, "ready_s": round(time.monotonic() - started, 2),
                                     "desktop": window.evaluate_js(
                                         "document.documentElement.classList.contains('slm-desktop')"),
                                     "browse_buttons": window.evaluate_js(VISIBLE_BROWSE)})
            break
        time.sleep(0.1)
    window.destroy()


def run_window(runs_dir: Optional[str] = None) -> int:
    started = time.monotonic()
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
        active = demo.studio.runner.active()
        if not active:
            return True
        keep = window.create_confirmation_dialog(
            "A run is training", f"Run {active} is training. Keep it training in the background? "
                                 "(Cancel stops it; it saves a checkpoint first.)")
        if not keep:
            demo.studio.runner.request(active, "stop")
        return True

    window.events.loaded += lambda: window.evaluate_js(MARK_DESKTOP)
    if os.environ.get(PROBE_ENV):
        window.events.loaded += lambda: _probe(window, os.environ[PROBE_ENV], started)
    window.events.closing += on_closing
    try:
        webview.start(gui="qt" if sys.platform.startswith("linux") else None)
    finally:
        watcher.stop()
        instance.close()
        demo.close()
    return 0

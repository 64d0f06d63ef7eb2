"""slm-studio without a window: the secret gate on a real Studio server, one instance at a time over the real
socket, the desktop entry, the no-display message, the remembered geometry, what a run's status changes
announce, and Browse's allow-list."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from slm_core.run import runs
from studio.desktop import geometry
from studio.desktop.api import DesktopApi
from studio.desktop.display import NO_DISPLAY, display_problem
from studio.desktop.entry import desktop_file, install, launcher_command
from studio.desktop.instance import Instance, ask_running
from studio.desktop.notify import RunWatcher
from studio.desktop.secret import COOKIE, first_url, new_secret
from studio.security import PathPolicy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # a real Studio server (Gradio import and page build)
def test_secret_gate_serves_only_the_window(tmp_path):
    from studio.app import build_app, launch

    secret, port = new_secret(), _free_port()
    demo = build_app(tmp_path / "runs", tabs=("studio.tabs.runs",))
    # _frontend=False: Gradio would probe "/" without the key, get 403 and refuse to start
    launch(demo, port=port, secret=secret, prevent_thread_lock=True, quiet=True, _frontend=False)
    try:
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/config", "/gradio_api/info"):
            refused = httpx.get(base + path)
            assert refused.status_code == 403 and "SLM" not in refused.text and "Runs" not in refused.text
        assert httpx.get(base + "/?slm_key=wrong").status_code == 403
        with httpx.Client() as window:  # the window: its first URL sets the cookie, the rest carry it
            first = window.get(first_url(port, secret))
            assert first.status_code == 200 and "SLM Studio" in first.text
            assert "HttpOnly" in first.headers["set-cookie"] and COOKIE in window.cookies
            assert window.get(base + "/config").status_code == 200
        assert httpx.get(base + "/config", headers={"X-SLM-Key": secret}).status_code == 200
    finally:
        demo.close()


def test_second_launch_raises_the_first(tmp_path):
    raised = []
    first = Instance("s3cret", lambda: raised.append(1), folder=tmp_path)
    try:
        assert ask_running(tmp_path) is True and raised == [1]
        with socket.create_connection(("127.0.0.1", first.port)) as other:  # no secret: ignored
            other.sendall(b"guess raise\n")
            assert other.makefile("rb").readline() == b""
        assert raised == [1]
    finally:
        first.close()
    assert not (tmp_path / "instance.json").exists()
    assert ask_running(tmp_path) is False  # nothing runs: this launch opens its own window


def test_desktop_entry(tmp_path):
    entry, icon = install(tmp_path)
    text = entry.read_text()
    assert entry == tmp_path / "applications" / "slm-studio.desktop"
    assert text.startswith("[Desktop Entry]\n") and "Type=Application" in text and "Icon=slm-studio" in text
    assert f"Exec={launcher_command()}\n" in text
    assert icon.read_text().lstrip().startswith("<svg")
    assert "Exec=/opt/x/slm-studio\n" in desktop_file("/opt/x/slm-studio")


def test_no_display_says_so_and_exits_2():
    assert display_problem({}, "linux") == NO_DISPLAY and display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({}, "darwin") is None and display_problem({}, "win32") is None
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, "-m", "studio.desktop"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == NO_DISPLAY and "python launch.py" in done.stderr


def test_geometry_round_trip(tmp_path):
    path = tmp_path / "cfg" / "window.json"
    assert geometry.load(path) == geometry.DEFAULT
    geometry.save({"width": 1024, "height": 700, "x": 40, "y": 30}, path)
    assert geometry.load(path) == {"width": 1024, "height": 700, "x": 40, "y": 30}
    path.write_text("{not json")
    assert geometry.load(path) == geometry.DEFAULT  # damaged: moved aside, defaults used


def test_notifications_follow_real_status_changes(tmp_path):
    sent = []
    old = tmp_path / "old"
    old.mkdir()
    runs.write_status(old, state="finished", step=5)
    watcher = RunWatcher(tmp_path, lambda title, body, run: sent.append((title, body, run)))
    watcher.check()
    assert sent == []  # what had ended before the app opened is not news
    queued = tmp_path / "next"
    queued.mkdir()
    runs.write_status(queued, state="queued")
    watcher.check()
    runs.write_status(queued, state="running", pid=None)
    watcher.check()
    runs.write_status(queued, state="finished", step=40)
    watcher.check()
    watcher.check()  # no change: no second notification
    bad = tmp_path / "bad"
    bad.mkdir()
    runs.write_status(bad, state="failed", error="out of memory at step 3\ntraceback ...")
    watcher.check()
    assert sent == [("Run next started", "It left the queue and is training.", "next"),
                    ("Run next finished", "Step 40.", "next"),
                    ("Run bad failed", "out of memory at step 3", "bad")]


def test_browse_allows_only_what_was_chosen(tmp_path):
    chosen, other = tmp_path / "picked", tmp_path / "never"
    chosen.mkdir(), other.mkdir()
    (chosen / "data.txt").write_text("hello")
    (other / "data.txt").write_text("secret")
    policy = PathPolicy(tmp_path / "runs")
    api = DesktopApi(policy, lambda kind, types: str(chosen / "data.txt"))
    assert api.browse("file") == str((chosen / "data.txt").resolve())
    assert policy.allows(chosen / "data.txt") and not policy.allows(other / "data.txt")
    assert DesktopApi(policy, lambda kind, types: None).browse("folder") is None

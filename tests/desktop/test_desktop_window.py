"""The real window under Xvfb: `slm-studio` opens Qt WebEngine on its secret-gated server, the page shows the
tabs (read through pywebview's JavaScript bridge), and closing the window with no run ends the process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs xvfb-run (apt-get install xvfb)"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("webview", "PySide6", "desktop_notifier")),
                       reason="needs the desktop extra (pip install -e '.[desktop]')"),
]


def test_window_shows_the_studio_and_closes_cleanly(tmp_path):
    probe = tmp_path / "probe.json"
    env = dict(os.environ, SLM_STUDIO_PROBE=str(probe), HOME=str(tmp_path / "home"),
               XDG_STATE_HOME=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    done = subprocess.run(["xvfb-run", "-a", sys.executable, "-m", "studio.desktop", "--runs-dir",
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(probe.read_text())
    assert seen["tabs"][:4] == ["Model", "Data", "Train", "Runs"] and seen["desktop"] is True
    assert seen["browse_buttons"].split("/")[0] != "0"  # Browse… shows in the window (hidden in a browser)
    assert not (tmp_path / "state" / "slm-studio" / "instance.json").exists()  # the instance let go

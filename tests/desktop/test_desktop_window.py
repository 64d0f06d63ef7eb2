"""The real window under Xvfb (Qt WebEngine), driven from outside the product by tests/desktop/window_driver.py,
in two launches: the page shows its tabs and a screenshot of the window is drawn; the window's server refuses
a request without the launch secret; a second `slm-studio` brings the hidden window back and exits without a
second server; closing with a run training asks (the real Qt question, its real button clicked), "keep
training" ends the app and leaves the run's own process training; the next launch shows it running in the
Runs tab, "stop" stops it with a checkpoint, and closing with no run asks nothing and ends the process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from slm_core.run import runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (apt-get install xvfb)"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("webview", "PySide6", "desktop_notifier")),
                       reason="needs the desktop extra (pip install -e '.[desktop]')"),
]

DRIVER = Path(__file__).with_name("window_driver.py")
# The tiniest run that keeps training while windows open and close (one layer, characters, no evaluation on
# the way): the test stops it. Its steps take milliseconds, so a few hundred would end before the second
# launch; 20,000 keep it training through both, and end it on its own should a killed test leave it behind.
TRAINING = {"recipe": "quickstart-cpu", "name": "background", "overrides": [
    "tokenizer.kind=char", "data.max_chars=200000", "model.context_length=64", "model.vocab_size=null",
    "model.n_layer=1", "train.batch_size=8", "train.precision=fp32", "train.eval_batches=2",
    "train.sample_tokens=4", "train.warmup_steps=2", "train.max_steps=20000", "train.eval_interval=20000",
    "train.ckpt_interval=20000"]}


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    """One X display (Xvfb) and one user's folders for every launch in this module, as on a desktop."""
    home = tmp_path_factory.mktemp("desktop")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as display:
        number = display.readline().strip()
    env = dict(os.environ, DISPLAY=f":{number}", HOME=str(home / "home"), XDG_STATE_HOME=str(home / "state"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_CACHE_HOME=str(home / "cache"), OMP_NUM_THREADS="1")  # the run leaves a core to the window
    env.pop("WAYLAND_DISPLAY", None)
    yield {"env": env, "runs": home / "runs", "state": home / "state" / "slm-studio"}
    xvfb.terminate()
    xvfb.wait(10)


class Launch:
    """`slm-studio` run by the driver, in the background; its files land in `out`."""

    def __init__(self, desktop, out: Path, *driver_args: str):
        self.out, self.log = out, out.with_suffix(".log")
        out.mkdir(parents=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(DRIVER), str(out), *driver_args, "--", "--runs-dir",
                                          str(desktop["runs"])], env=desktop["env"], stdout=log,
                                         stderr=subprocess.STDOUT)

    def read(self, name: str, timeout_s: float = 120) -> dict:
        path = self.out / name

        def ready():
            if (self.out / "error.json").exists():
                raise AssertionError(json.loads((self.out / "error.json").read_text())["error"])
            if self.proc.poll() is not None and not path.exists():
                raise AssertionError(f"slm-studio exited ({self.proc.returncode}):\n{self.tail()}")
            return path.exists()

        wait_for(ready, timeout_s, f"{name} from the window")
        return json.loads(path.read_text())

    def exit_code(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"slm-studio did not exit after its window closed:\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def launch(desktop):
    """launch(out, *driver_args) -> Launch; whatever happens, no app and no training worker outlives the test."""
    launched: list[Launch] = []

    def start(out: Path, *driver_args: str) -> Launch:
        launched.append(Launch(desktop, out, *driver_args))
        return launched[-1]

    yield start
    for app in launched:
        if app.proc.poll() is None:
            app.proc.kill()
            app.proc.wait(30)
    for status in desktop["runs"].glob("*/status.json"):
        pid = json.loads(status.read_text()).get("pid")
        if pid and alive(pid):
            os.killpg(pid, signal.SIGKILL)  # the worker leads its own session (studio.runner)


def test_the_window_from_first_launch_to_closing_while_a_run_trains(desktop, launch, tmp_path):
    first = launch(tmp_path / "first", "--start-run", json.dumps(TRAINING), "--screenshot",
                   str(tmp_path / "window.png"), "--hide-until-raised", "--answer", "keep")
    page = first.read("page.json")
    assert page["tabs"][:4] == ["Model", "Data", "Train", "Runs"] and page["desktop"] is True
    assert page["browse_buttons"].split("/")[0] != "0"  # Browse… shows in the window (hidden in a browser)
    shot = page["screenshot"]
    assert (shot["width"], shot["height"]) >= (800, 600) and shot["colours"] > 20  # the page drawn, not blank
    assert (tmp_path / "window.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The window's own server answers only the window: no secret, nothing.
    for path in ("/", "/config"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{page['port']}{path}", timeout=10)
        assert refused.value.code == 403

    # A second `slm-studio` brings the hidden window back and leaves: no second server.
    assert first.read("hidden.json")["visible"] is False
    second = subprocess.run([sys.executable, "-m", "studio.desktop", "--runs-dir", str(desktop["runs"])],
                            env=desktop["env"], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "already open" in second.stdout, second.stderr
    assert json.loads((desktop["state"] / "instance.json").read_text())["pid"] == page["pid"]  # still the first
    assert first.read("raised.json") == {"raised": True, "visible": True, "minimised": False}

    # Closed while the run trains: asked, "keep training" clicked; the app ends, the run's own process trains on.
    run = first.read("run.json", 240)
    run_dir = desktop["runs"] / run["name"]
    assert first.exit_code() == 0, first.tail()
    [question] = json.loads((first.out / "dialog.json").read_text())
    assert run["name"] in question["text"] and question["clicked"] == "OK"
    worker = run["pid"]
    assert alive(worker) and not alive(first.proc.pid)
    step = runs.read_status(run_dir)["step"]
    wait_for(lambda: runs.read_status(run_dir)["step"] > step, 60, "the run to keep training")
    assert runs.read_status(run_dir)["state"] == "running"
    assert not (desktop["state"] / "instance.json").exists()  # the instance let go

    # The next launch re-attaches: the Runs tab shows it training. Asked again, "stop" clicked: it stops with a
    # checkpoint; then the window closes with no run, asks nothing, and the process ends.
    again = launch(tmp_path / "again", "--show-runs", "--ask-first", "--answer", "stop")
    assert [row[:2] for row in again.read("runs.json")["rows"]] == [[run["name"], "running"]]
    assert again.exit_code(180) == 0, again.tail()
    [question] = json.loads((again.out / "dialog.json").read_text())  # one question: none at the close
    assert run["name"] in question["text"] and question["clicked"] == "Cancel"
    wait_for(lambda: not alive(worker), 60, "the stopped run's process to exit")
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped"
    assert runs.read_json(run_dir / "checkpoints" / "latest" / "state.json")["step"] == status["step"] > step
    assert not (desktop["state"] / "instance.json").exists()

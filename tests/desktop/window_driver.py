"""Drives the real `slm-studio` window from outside the product: `python tests/desktop/window_driver.py OUT
[--start-run JSON] [--screenshot PNG [--settle]] [--show-runs] [--hide-until-raised] [--hold-until FILE]
[--ask-first] [--answer keep|stop] -- ARGS` runs studio.desktop.main.main(ARGS) (what the console script runs) with an
`on_loaded` hook that does those steps in that order: reads the page through pywebview's JavaScript bridge,
works the Qt window in Qt's own thread, writes what it saw to OUT/*.json for the test, and finally closes the
window the way its close button does (QWidget.close(): the closing event, the question while a run trains).

Each close question (a real QMessageBox, modal) is answered by clicking its real button: a Qt timer in the
GUI thread looks for one while it runs its own event loop. Files, written atomically:
  OUT/page.json    the page once it shows its tabs (tabs, desktop mark, Browse buttons, port, pid, seconds)
  OUT/runs.json    (--show-runs) the Runs tab's table as the page shows it
  OUT/hidden.json  (--hide-until-raised) the window is hidden: now another launch may raise it
  OUT/raised.json  ... and what the window looked like once it came back (visible, minimised)
  OUT/run.json     (--start-run) the run started through the app's own runner, once it trains
  OUT/dialog.json  every question asked: title, text, the button clicked
  OUT/error.json   what went wrong in the hook (the window is closed anyway)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a program from any folder

from slm_core.fsio import atomic_write_json  # noqa: E402
from studio.desktop.main import main  # noqa: E402
from studio.desktop.window import keep_or_stop_active_run  # noqa: E402

TAB_TITLES = "Array.from(document.querySelectorAll('[role=tab]')).map(t => t.textContent.trim())"
IS_DESKTOP = "document.documentElement.classList.contains('slm-desktop')"
VISIBLE_BROWSE = ("Array.from(document.querySelectorAll('.slm-browse')).filter(b => getComputedStyle(b).display "
                  "!== 'none').length + '/' + document.querySelectorAll('.slm-browse').length")
LOADING = "document.body.innerText.includes('Loading...')"  # Gradio's placeholder while a load event runs
OPEN_RUNS = "document.querySelector('#tab-runs-button, button[id$=\"runs-button\"]')?.click()"
# The Runs table's rows, cell by cell (the Dataframe draws its body as grid rows of grid cells), once it has any.
RUNS_ROWS = ("Array.from(document.querySelectorAll('#runs-table [role=row]')).map(r => "
             "Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim())).filter(c => c[0])")
KEEP: dict = {}


def wait_for(check, timeout_s: float = 120.0, what: str = "the page"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class GuiThread:
    """Runs a function in Qt's GUI thread (where widgets may be touched) and returns its result."""

    def __init__(self):
        from qtpy.QtCore import QObject, Qt, Signal, Slot
        from qtpy.QtWidgets import QApplication

        class Relay(QObject):
            call = Signal(object)

            @Slot(object)
            def run(self, job) -> None:
                job()

        self.relay = Relay()
        self.relay.moveToThread(QApplication.instance().thread())  # its slot runs there
        self.relay.call.connect(self.relay.run, Qt.QueuedConnection)

    def __call__(self, fn, timeout_s: float = 30.0):
        done, box = threading.Event(), {}

        def job():
            try:
                box["value"] = fn()
            except BaseException as error:  # noqa: BLE001 - handed back to the calling thread
                box["error"] = error
            done.set()

        self.relay.call.emit(job)
        if not done.wait(timeout_s):
            raise TimeoutError("the GUI thread did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")


def answer_close_questions(out: Path, answer: str):
    """A timer in the GUI thread: clicks OK ("keep training") or Cancel ("stop it") on each close question's
    real message box while it is up, and records what it said in OUT/dialog.json (a list)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    timer, asked = QTimer(QApplication.instance()), []  # Qt's to keep and delete, in its own thread

    def look() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox) or not box.isVisible():
            return
        button = box.button(QMessageBox.Ok if answer == "keep" else QMessageBox.Cancel)
        asked.append({"title": box.windowTitle(), "text": box.text(), "clicked": button.text().replace("&", "")})
        atomic_write_json(out / "dialog.json", asked)  # (&: the button's mnemonic mark)
        button.click()

    timer.timeout.connect(look)
    timer.start(50)


def window_state(native) -> dict:
    return {"visible": native.isVisible(), "minimised": native.isMinimized()}


def screenshot(native, path: Path) -> dict:
    image = native.grab().toImage()
    image.save(str(path))
    # Colours on a grid of the image: a page drawn has many; a blank (or black) grab has one.
    colours = {image.pixel(x, y) for x in range(0, image.width(), 25) for y in range(0, image.height(), 25)}
    return {"path": str(path), "width": image.width(), "height": image.height(), "colours": len(colours)}


def drive(window, demo, args, out: Path, started: float) -> None:
    gui = KEEP["gui"] = GuiThread()  # lives as long as the process: a QObject of Qt's thread, never deleted here
    gui(lambda: answer_close_questions(out, args.answer))
    runner = demo.studio.runner
    try:
        if args.start_run:  # first, so that the worker starts while the page draws
            run = json.loads(args.start_run)
            name = runner.start(run["recipe"], run.get("overrides", []), name=run["name"])
        tabs = wait_for(lambda: window.evaluate_js(TAB_TITLES), what="the tabs")
        page = {"tabs": tabs, "ready_s": round(time.monotonic() - started, 2), "desktop": window.evaluate_js(IS_DESKTOP),
                "browse_buttons": window.evaluate_js(VISIBLE_BROWSE), "port": demo.server_port, "pid": os.getpid()}
        if args.screenshot:
            if args.settle:  # the page as its load events leave it (what a person sees), if that comes soon
                try:
                    wait_for(lambda: not window.evaluate_js(LOADING), 20, "the page to settle")
                except TimeoutError:
                    pass
            page["screenshot"] = gui(lambda: screenshot(window.native, Path(args.screenshot)))
        atomic_write_json(out / "page.json", page)
        if args.show_runs:
            window.evaluate_js(OPEN_RUNS)
            atomic_write_json(out / "runs.json", {"rows": wait_for(lambda: window.evaluate_js(RUNS_ROWS), 60,
                                                                   "the Runs table")})
        if args.hide_until_raised:
            gui(lambda: (window.native.showMinimized(), window.native.hide()))
            atomic_write_json(out / "hidden.json", gui(lambda: window_state(window.native)))
            raised = wait_for(lambda: gui(lambda: window_state(window.native)["visible"]), 60, "a raise")
            atomic_write_json(out / "raised.json", {"raised": raised, **gui(lambda: window_state(window.native))})
        if args.start_run:
            status = Path(demo.studio.runs_dir) / name / "status.json"
            wait_for(lambda: status.exists() and json.loads(status.read_text()).get("step", 0) > 0, 180,
                     "the run to train")
            atomic_write_json(out / "run.json", {"name": name, **json.loads(status.read_text())})
        if args.hold_until:
            wait_for(lambda: Path(args.hold_until).exists(), 600, f"{args.hold_until} to appear")
        if args.ask_first:
            # The close question as the closing window asks it (the real dialog, answered by the timer), before
            # the close: after "stop" the run ends, and the window then closes with no run (nothing to ask).
            asked = keep_or_stop_active_run(runner, window.create_confirmation_dialog)
            wait_for(lambda: runner.active() is None, 120, f"run {asked} to stop")
    except BaseException:  # noqa: BLE001 - the test reads it; the window must close either way
        atomic_write_json(out / "error.json", {"error": traceback.format_exc()})
    gui(lambda: window.native.close())  # what the window's close button does: the closing event, the question


def parse(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hide-until-raised", action="store_true")
    parser.add_argument("--start-run", default=None, help='{"recipe": ..., "overrides": [...], "name": ...}')
    parser.add_argument("--show-runs", action="store_true")
    parser.add_argument("--answer", choices=("keep", "stop"), default="keep", help="to the close question")
    parser.add_argument("--hold-until", default=None, help="keep the window open until this file exists")
    parser.add_argument("--ask-first", action="store_true", help="ask the close question before closing")
    parser.add_argument("--screenshot", default=None, help="a PNG of the window once the tabs show")
    parser.add_argument("--settle", action="store_true", help="... and the page's load events have drawn it")
    return parser.parse_args(argv), app_args


if __name__ == "__main__":
    started = time.monotonic()
    options, app_args = parse()
    options.out.mkdir(parents=True, exist_ok=True)
    sys.exit(main(app_args, on_loaded=lambda window, demo: drive(window, demo, options, options.out, started)))

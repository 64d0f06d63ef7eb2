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

from slm_core.errors import SLMError
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


# Every path box with a Browse… button: (its elem_id or label) → what its handlers check it as (check_path's kind;
# "recipe": the Train tab's recipe file), one entry per button.
BROWSED = {"model-real": ["model"], "Source (what the run reads)": ["data"],
           "GPT-2 vocabulary folder (offline copy)": ["path"], "Recipe": ["recipe"], "Base model": ["model"],
           "Teacher": ["model"], "Prompts": ["data"], "chat-model": ["model", "model"], "chat-draft": ["model"],
           "compare-model-a": ["model"], "compare-model-b": ["model"], "serve-model": ["model", "model"],
           "quantize-run": ["model"], "evaluate-models": ["model"], "evaluate-data": ["data"],
           "More tasks": ["path"], "Prompts (JSONL)": ["path"], "export-model": ["model"],
           "export-destination": ["path"]}


@pytest.fixture(scope="module")
def studio_page(tmp_path_factory):
    from studio.app import build_app

    return build_app(tmp_path_factory.mktemp("page") / "runs")


def _handlers(demo, component, event: str) -> list:
    return [fn for fn in demo.fns.values() if any(t[0] == component._id and t[1] == event for t in fn.targets)]


def _browse_buttons(demo) -> dict:
    """{box key: [(button, its click's BlockFunction)]} for every Browse… button on the page."""
    import gradio as gr

    found: dict = {}
    for block in demo.blocks.values():
        if isinstance(block, gr.Button) and "slm-browse" in (block.elem_classes or []):
            click = _handlers(demo, block, "click")[0]
            box = click.inputs[0]
            assert click.fn is None and click.outputs == [box]  # page-side only: the window's dialog fills the box
            found.setdefault(box.elem_id or box.label, []).append((block, click))
    return found


def test_every_path_box_has_browse_and_takes_only_what_was_chosen(studio_page, tmp_path):
    import gradio as gr

    from studio.security import check_path
    from studio.tabs.train import check_recipe

    ctx, buttons = studio_page.studio, _browse_buttons(studio_page)
    assert {key: len(found) for key, found in buttons.items()} == {key: len(kinds) for key, kinds in BROWSED.items()}
    assert buttons["chat-model"][1][0].value == "GGUF…" and '"file", ["GGUF model (*.gguf)"]' in buttons["chat-model"][1][1].js
    assert "[...current, chosen]" in buttons["evaluate-models"][0][1].js  # a multiselect: added to the list
    assert buttons["GPT-2 vocabulary folder (offline copy)"][0][0].visible is False  # shown with its box
    recipe = (Path(__file__).resolve().parents[2] / "presets" / "recipes" / "quickstart-cpu.yaml").read_text()
    for n, (key, kinds) in enumerate(BROWSED.items()):
        for m, kind in enumerate(kinds):
            chosen, never = tmp_path / f"picked{n}-{m}", tmp_path / f"never{n}-{m}"
            for folder in (chosen, never):
                folder.mkdir()
                (folder / "recipe.yaml").write_text(recipe)
            target = str(chosen / "recipe.yaml") if kind in ("recipe", "data", "path") else str(chosen)
            value = DesktopApi(ctx.paths, lambda kind, types: target).browse("file")
            refused = str(never / "recipe.yaml") if kind in ("recipe", "data", "path") else str(never)
            if kind == "recipe":
                assert check_recipe(ctx, value) == value
                with pytest.raises(SLMError):
                    check_recipe(ctx, refused)
                continue
            assert check_path(ctx, value, kind) == value, key
            with pytest.raises(gr.Error):
                check_path(ctx, refused, kind)


def test_a_browsed_recipe_file_prefills_the_form_and_a_never_chosen_one_is_refused(studio_page, tmp_path):
    import gradio as gr

    ctx = studio_page.studio
    browse = _browse_buttons(studio_page)["Recipe"][0][1]
    prefill = next(fn for fn in studio_page.fns.values() if fn.trigger_after == browse._id)  # Browse's .then
    for folder in ("picked", "never"):
        (tmp_path / folder).mkdir()
        text = (Path(__file__).resolve().parents[2] / "presets" / "recipes" / "quickstart-cpu.yaml").read_text()
        (tmp_path / folder / "stories.yaml").write_text(text.replace("max_steps:", "max_steps: 7 #"))
    chosen = DesktopApi(ctx.paths, lambda kind, types: str(tmp_path / "picked" / "stories.yaml")).browse("file")
    values = prefill.fn(chosen)
    steps = list(ctx.fields).index("train.max_steps")
    assert values[2 + steps] == 7  # about, model preset, then the fields
    with pytest.raises(gr.Error, match="allow"):
        prefill.fn(str(tmp_path / "never" / "stories.yaml"))


def test_a_notification_click_opens_that_run_in_the_runs_tab(studio_page):
    import gradio as gr

    from studio.desktop.run_open import BOX_ID, show_run_js

    ctx = studio_page.studio
    run = ctx.runs_dir / "stories-3"
    run.mkdir(parents=True)
    runs.write_status(run, state="finished", step=12)
    box = next(b for b in studio_page.blocks.values() if getattr(b, "elem_id", None) == BOX_ID)
    shown = _handlers(studio_page, box, "change")[0]
    tabs, opened, status, *_ = shown.fn("stories-3\n1733400000000")
    assert tabs.selected == "runs" and opened["value"] == "stories-3" and "stories-3" in status
    assert shown.outputs[1].elem_id == "runs-open"
    assert shown.fn("gone\n2") == [gr.skip()] * len(shown.outputs)  # a run deleted since: nothing moves
    js = show_run_js('a "quoted" run')
    assert BOX_ID in js and '"a \\"quoted\\" run"' in js  # the name as a JS string literal

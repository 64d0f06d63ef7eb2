"""Clicking a run's notification shows that run: the window writes the run's name into a hidden box, whose change
selects the Runs tab with the run open in its "Open run" picker and its panel drawn. The box sits outside the tabs
(Gradio renders a tab's children only once it is first selected, so a box inside Runs may not exist yet); the
panel is drawn here too, since a picker that is not on the page yet fires no change of its own."""

from __future__ import annotations

import json
from typing import Any, Callable

import gradio as gr

from slm_core.run import runs
from studio.security import check_path
from studio.tabs import QUIET

BOX_ID = "desktop-show-run"


def add_run_opener(ctx: Any, opened: Any, open_run: Callable[[str], list], panel: list) -> None:
    """`opened`: the Runs tab's picker; `open_run(name)` → the values of `panel` (that tab's run panel)."""
    def wire(ctx: Any) -> None:  # a finalizer: runs inside the page, after the tabs closed
        box = gr.Textbox("", visible="hidden", elem_id=BOX_ID, show_label=False, container=False)
        outputs = [ctx.tabs["Runs"].parent, opened, *panel]
        box.change(lambda text: shown(ctx, text, open_run, len(panel)), box, outputs, **QUIET)

    ctx.finalizers.append(wire)


def shown(ctx: Any, text: str, open_run: Callable[[str], list], n_panel: int) -> list:
    """The Runs tab selected with the run named on the box's first line open; nothing when it is gone."""
    name = (text or "").split("\n", 1)[0].strip()
    names = [s["name"] for s in runs.list_runs(ctx.runs_dir)]
    if name not in names:
        return [gr.skip()] * (2 + n_panel)
    check_path(ctx, name, "run")
    return [gr.Tabs(selected="runs"), gr.update(choices=names, value=name), *open_run(name)]


def show_run_js(name: str) -> str:
    """What the window runs to show `name`; a count after a newline makes a second click on the same run a change
    too. (A Textbox's `input` event follows key presses only: the page listens to its change.)"""
    return f"""(() => {{
      const box = document.querySelector('#{BOX_ID} textarea, #{BOX_ID} input');
      if (!box) return false;
      box.value = {json.dumps(name)} + '\\n' + Date.now();
      box.dispatchEvent(new Event('input', {{bubbles: true}}));
      return true;
    }})()"""

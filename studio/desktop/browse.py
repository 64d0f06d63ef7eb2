"""The "Browse…" button beside a path box: shown only inside the desktop window (which marks the page with
the `slm-desktop` class), it asks the window's js_api (studio.desktop.api.DesktopApi.browse) for the system's
dialog; the chosen path is allowed for the session there and written into the box, so no "Allow this
folder?" step. In a browser tab the button stays hidden and the typed path keeps the allow box."""

from __future__ import annotations

import json
from typing import Any, Optional

import gradio as gr

KINDS = ("file", "folder", "save")
STYLE = "<style>.slm-browse{display:none!important}.slm-desktop .slm-browse{display:flex!important}</style>"
GGUF = ("GGUF model (*.gguf)",)
YAML = ("YAML recipe (*.yaml;*.yml)",)
JSONL = ("JSON Lines (*.jsonl;*.json)",)


def add_browse(ctx: Any, box: Any, kind: str = "file", file_types: tuple[str, ...] = (), label: str = "Browse…",
               join: str = "", visible: Optional[bool] = None) -> gr.Button:
    """A Browse… button right after `box` (call it where the button should appear, e.g. inside the box's
    row). `kind`: file | folder | save. A multiselect box gets the choice added to its list; `join` (e.g. ", ")
    appends to a text box's list instead of replacing it. `visible`: the box's own, unless given (a tab that
    shows the box later shows the button with it). The click event is `button.chosen`, for a tab that reacts
    to a chosen path (`.then(...)`): a value written by the page fires the box's change, never its input."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not ctx.shared.get("browse_style"):
        ctx.shared["browse_style"] = gr.HTML(STYLE, visible=True, padding=False)
    shown = box.visible is not False if visible is None else visible
    button = gr.Button(label, size="sm", scale=0, min_width=90, elem_classes=["slm-browse"], visible=shown)
    args = json.dumps([kind, list(file_types)])
    # The page waits for the dialog; a cancelled dialog (null) keeps the box as it was.
    button.chosen = button.click(None, box, box, js=f"""async (current) => {{
        const api = window.pywebview && window.pywebview.api;
        if (!api) return current;
        const chosen = await api.browse(...{args});
        if (!chosen) return current;
        if (Array.isArray(current)) return current.includes(chosen) ? current : [...current, chosen];
        const join = {json.dumps(join)};
        return join && current && current.trim() ? current.trim() + join + chosen : chosen;
    }}""")
    return button

"""The "Browse…" button beside a path box: shown only inside the desktop window (which marks the page with
the `slm-desktop` class), it asks the window's js_api (studio.desktop.api.DesktopApi.browse) for the system's
dialog; the chosen path is allowed for the session there and written into the box, so no "Allow this
folder?" step. In a browser tab the button stays hidden and the typed path keeps the allow box."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

KINDS = ("file", "folder", "save")
STYLE = "<style>.slm-browse{display:none!important}.slm-desktop .slm-browse{display:flex!important}</style>"


def add_browse(ctx: Any, box: Any, kind: str = "file", file_types: tuple[str, ...] = ()) -> gr.Button:
    """A Browse… button right after `box` (call it where the button should appear, e.g. inside the box's
    row). `kind`: file | folder | save."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not ctx.shared.get("browse_style"):
        ctx.shared["browse_style"] = gr.HTML(STYLE, visible=True, padding=False)
    button = gr.Button("Browse…", size="sm", scale=0, min_width=90, elem_classes=["slm-browse"])
    args = json.dumps([kind, list(file_types)])
    # The page waits for the dialog; a cancelled dialog (null) keeps the box as it was.
    button.click(None, box, box, js=f"""async (current) => {{
        const api = window.pywebview && window.pywebview.api;
        if (!api) return current;
        const chosen = await api.browse(...{args});
        return chosen || current;
    }}""")
    return button

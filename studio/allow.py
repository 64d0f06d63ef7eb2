"""The page's half of the folder allow-list (studio.security.PathPolicy): an "Allow this folder?" box offered
when an event refused an existing path. Nothing is allowed without that second click."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import gradio as gr

from slm_core.errors import SLMError
from studio.security import session_allow_ok
from studio.tabs import PRIVATE, QUIET, message


class AllowBox:
    """One box per tab; `after(event, [(kind, component), ...])` offers the first refused folder when `event`
    fails."""

    def __init__(self, ctx: Any, elem_id: str):
        self.ctx = ctx
        with gr.Group(visible=False, elem_id=elem_id) as self.box:
            self.text = gr.Markdown("")
            with gr.Row():
                self.yes = gr.Button("Allow this folder", variant="primary", size="sm", elem_id=f"{elem_id}-yes")
                self.no = gr.Button("Cancel", size="sm")
        self.note = gr.Markdown("", elem_id=f"{elem_id}-note")
        self.folder = gr.State(None)
        self.yes.click(self.allow, self.folder, [self.box, self.note, self.folder], **PRIVATE)
        self.no.click(lambda: (gr.update(visible=False), "", None), None, [self.box, self.note, self.folder], **QUIET)

    def after(self, event: Any, checks: Sequence[tuple[str, Any]]) -> None:
        kinds = [kind for kind, _ in checks]
        # .failure, not .then: the page runs a .then only after success (Gradio 6), and a refusal is an error.
        event.failure(lambda *values: self.offer(kinds, values), [c for _, c in checks],
                      [self.box, self.text, self.folder], **QUIET)

    def offer(self, kinds: Sequence[str], values: Sequence[Any]):
        for kind, value in zip(kinds, values):
            folder = self.ctx.paths.folder_to_offer(kind, value)
            if folder is not None:
                return (gr.update(visible=True),
                        f"The Studio reads only the runs folder, uploads and folders you allow. Allow **`{folder}`** "
                        "(and everything in it) for this session? Then run it again.", str(folder))
        return gr.update(visible=False), gr.skip(), None

    def allow(self, folder: Optional[str], request: gr.Request = None):
        if not folder:
            return gr.update(visible=False), "", None
        if not session_allow_ok(request, self.ctx.exposed_without_login):
            return gr.update(visible=False), message(
                "error", "This Studio runs without a login: only a browser on its own machine may allow folders "
                         "(or restart it with --allow-path)."), None
        try:
            path = self.ctx.paths.allow(folder)
        except SLMError as error:
            return gr.update(visible=False), message("error", str(error)), None
        return gr.update(visible=False), message("ok", f"Allowed `{path}` for this session: run it again."), None

"""The page's half of the folder allow-list (studio.security.PathPolicy): an "Allow this folder?" box offered
when an event refused an existing path. Nothing is allowed without that second click."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import gradio as gr

from slm_core.errors import SLMError
from studio.security import session_allow_ok
from studio.tabs import PRIVATE, QUIET, message


class AllowBox:
    """One box per tab; `after(event, [(kind, component), ...])` offers the first refused folder when `event`
    fails, and hides the offer when it succeeds. `parent`: offer the refused folder's parent too (a folder of
    models is one click); `retried`: every event it follows is rerun through `on_allowed` (no "run it again"). The note under it ("Allowed ...") is cleared when a checked value changes: it is about
    the value that was refused, not the next one."""

    def __init__(self, ctx: Any, elem_id: str, parent: bool = False, retried: bool = False):
        self.ctx, self.parent, self.retries = ctx, parent, retried  # retried: every refused event reruns itself
        with gr.Group(visible=False, elem_id=elem_id) as self.box:
            self.text = gr.Markdown("")
            with gr.Row():
                self.yes = gr.Button("Allow this folder", variant="primary", size="sm", elem_id=f"{elem_id}-yes")
                self.up = gr.Button("Allow the parent folder", size="sm", visible=False, elem_id=f"{elem_id}-parent")
                self.no = gr.Button("Cancel", size="sm")
        self.note = gr.Markdown("", elem_id=f"{elem_id}-note")
        self.folder = gr.State(None)
        self.allowed = [
            self.yes.click(self.allow, self.folder, [self.box, self.note, self.folder], **PRIVATE),
            self.up.click(self.allow_parent, self.folder, [self.box, self.note, self.folder], **PRIVATE)]
        self.no.click(lambda: (gr.update(visible=False), "", None), None, [self.box, self.note, self.folder], **QUIET)
        self._cleared: set[int] = set()

    def after(self, event: Any, checks: Sequence[tuple[str, Any]]) -> None:
        kinds = [kind for kind, _ in checks]
        # .failure, not .then: the page runs a .then only after success (Gradio 6), and a refusal is an error.
        event.failure(lambda *values: self.offer(kinds, values), [c for _, c in checks],
                      [self.box, self.text, self.up, self.folder], **QUIET)
        event.success(lambda: gr.update(visible=False), None, self.box, **QUIET)
        for _, component in checks:
            if id(component) not in self._cleared and hasattr(component, "change"):
                self._cleared.add(id(component))
                component.change(lambda: "", None, self.note, **QUIET)

    def on_allowed(self, fn: Callable, inputs: Any, outputs: Any) -> None:
        """Run `fn` again once a folder is allowed (for events a person cannot simply repeat, like a picker's
        details)."""
        for event in self.allowed:
            event.success(fn, inputs, outputs, **QUIET)

    def offer(self, kinds: Sequence[str], values: Sequence[Any]):
        for kind, value in zip(kinds, values):
            folder = self.ctx.paths.folder_to_offer(kind, value)
            if folder is not None:
                parent = self._parent(folder)
                also = f", or its parent **`{parent}`** (with everything beside it)" if parent else ""
                return (gr.update(visible=True),
                        f"The Studio reads only the runs folder, uploads and folders you allow. Allow **`{folder}`** "
                        f"(and everything in it){also} for this session?"
                        + ("" if self.retries else " Then run it again."),
                        gr.update(visible=parent is not None), str(folder))
        return gr.update(visible=False), gr.skip(), gr.update(visible=False), None

    def _parent(self, folder: Path) -> Optional[Path]:
        """The parent worth offering: not the file system's root (which cannot be allowed), not one allowed."""
        if not self.parent:
            return None
        parent = Path(folder).parent
        if parent == Path(parent.anchor) or self.ctx.paths.allows(parent):
            return None
        return parent

    def allow_parent(self, folder: Optional[str], request: gr.Request = None):
        return self.allow(folder and str(Path(folder).parent), request)

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
        again = "" if self.retries else ": run it again"
        return gr.update(visible=False), message("ok", f"Allowed `{path}` for this session{again}."), None

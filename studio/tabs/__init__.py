"""One module per tab; each has `TITLE` and `build(ctx)` (see studio.app). Shared helpers live here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_core.run.runs import list_runs  # not `runs`: studio.tabs.runs is a submodule of this package
from studio.style import MARKS, mark

# Internal events (refreshes, show/hide, chained .then steps) stay out of the API page and clients.
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
QUIET: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
# Handlers that follow many fields. Not "always_last": Gradio 6 then re-sends the whole change event when a
# trigger came meanwhile, and handlers sharing fields set each other off without end (the page never idles).
FORM_TRIGGER = "multiple"


def run_names(root: Path, with_checkpoint: bool = False) -> list[str]:
    """Runs in the runs dir, newest first; optionally only those with a loadable checkpoint."""
    names = [r["name"] for r in list_runs(root)]
    if with_checkpoint:
        names = [n for n in names if has_checkpoint(root / n)]
    return names


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints" / tag / "state.json").exists() for tag in ("best", "latest"))


def message(kind: str, text: str) -> str:
    """A one-line Markdown notice: kind is 'ok', 'info', 'warn' or 'error' (a coloured word, see style.mark)."""
    return f"{mark(kind)} {text}" if kind in MARKS else text


def set_initial(component: Any, value: Any) -> None:
    """Change a component's value before the page is served (what a fresh page and API clients start from)."""
    component.value = component.postprocess(value)

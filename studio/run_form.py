"""The Train form and the runs it describes: a run's settings back into the form (load, clone, follow), the
form saved as the user's recipe, and the queue as the tab shows it. Torch-free."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable, Optional

from slm_core.config import list_presets, save_user_recipe
from slm_core.errors import SLMError
from slm_core.run import queue as runqueue
from studio.command import page_config, recipe_values


def run_recipe(runs_dir: Path, name: str) -> str:
    """The path of a run's config.yaml: what "load settings" puts in the Recipe box."""
    path = Path(runs_dir) / name / "config.yaml"
    if not path.exists():
        raise SLMError(f"run '{name}' has no config.yaml yet: wait until its worker has started")
    return str(path)


def recipe_choices(current: Optional[str] = None) -> list:
    """The Recipe dropdown: every built-in and user recipe, plus a loaded run's settings when one is shown."""
    choices: list = list_presets("recipes")
    if current and current.endswith((".yaml", ".yml")):
        choices.append((f"settings of run {Path(current).parent.name}", current))
    return choices


def run_settings(runs_dir: Path, name: str, keys: Iterable[str]) -> tuple[str, Optional[str], list[Any]]:
    """(recipe value, model preset, one value per form field) that put `name`'s settings in the form."""
    recipe = run_recipe(runs_dir, name)
    model_preset, values = recipe_values(recipe, list(keys))
    return recipe, model_preset, values


def unused_name(runs_dir: Path, base: str, first: str, then: str = "{base}{n}") -> str:
    """`first`, else `then` with n = 2, 3, ... (both formatted with base): the first name that is neither a run
    nor queued."""
    taken = {e["name"] for e in runqueue.entries(runs_dir)}
    candidate, n = first.format(base=base), 1
    while (Path(runs_dir) / candidate).exists() or candidate in taken:
        n += 1
        candidate = then.format(base=base, n=n)
    return candidate


def clone_name(runs_dir: Path, name: str) -> str:
    """<name>-clone, -clone2, ... : the first that is neither a run nor queued."""
    return unused_name(runs_dir, name, "{base}-clone", "{base}-clone{n}")


def fresh_run_name(runs_dir: Path, recipe: str) -> str:
    """<recipe>-1, -2, ... (for a loaded run's settings, <run>-1, ...): the name a recipe change proposes."""
    base = Path(recipe).parent.name if str(recipe).endswith((".yaml", ".yml")) else str(recipe)
    return unused_name(runs_dir, base, "{base}-1", "{base}-{n}")


def save_recipe(name: str, recipe: str, model_preset: Optional[str], values: dict[str, Any]) -> Path:
    """The form as the user recipe `name` (what Start would run, as a recipe file)."""
    config = page_config(recipe, model_preset, values)
    source = Path(recipe).parent.name if recipe.endswith((".yaml", ".yml")) else recipe
    return save_user_recipe((name or "").strip(), config, description=f"Saved from the Studio (from {source}).")


def queue_markdown(entries: list[dict], holder: Optional[str]) -> str:
    if not entries:
        return ("**Queue**: empty. While a run trains, **Queue** (the Start button) lines the form's run up "
                "here; `slm queue add` does the same from a shell.")
    lines = [f"**Queue**: {len(entries)} waiting; each starts when the one before it ends"
             + (f" (now training: **{html.escape(holder)}**)." if holder else ".")]
    for i, entry in enumerate(entries, 1):
        sets = len(entry.get("overrides") or [])
        recipe = entry["recipe"]
        recipe = f"settings of {Path(recipe).parent.name}" if recipe.endswith((".yaml", ".yml")) else recipe
        lines.append(f"{i}. `{entry['name']}` — {html.escape(recipe)}" + (f", {sets} changed settings" if sets else ""))
    return "\n".join(lines)

"""A run made by `slm shrink` as its teacher's draft for speculative decoding (slm_core.infer.speculative): found
from the runs folder's files alone, without torch, so the Studio's server can offer it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from slm_core.run.runs import read_status, run_summary, runs_dir


def _key(spec: str, root: Path) -> str:
    """A model source as one comparable string: the run folder for a run or one of its checkpoints, else the
    resolved folder, else the text (a Hub id)."""
    path = Path(spec).expanduser()
    if not path.is_dir() and (root / spec).is_dir():
        path = root / spec
    if not path.is_dir():
        return spec
    path = path.resolve()
    if path.parent.name == "checkpoints":  # a run's checkpoint folder: the run
        path = path.parent.parent
    return str(path)


def find_shrunk_draft(teacher: str, root: Optional[Path] = None) -> Optional[dict]:
    """The newest finished run in the runs folder made by `slm shrink` (distill.shrink_layers) from `teacher`, as
    `run_summary` gives it with its layer count added; None when there is none."""
    base = runs_dir(root)
    if not base.is_dir():
        return None
    wanted, found = _key(str(teacher), base), []
    for run in base.iterdir():
        config = _distill_section(run)
        teacher_spec = config.get("teacher")
        if not config.get("shrink_layers") or not teacher_spec or not (run / "checkpoints").is_dir():
            continue
        if _key(str(teacher_spec), base) == wanted and read_status(run).get("state") not in ("failed", "running"):
            found.append(dict(run_summary(run), layers=config["shrink_layers"]))
    return max(found, key=lambda r: r.get("started_at") or 0, default=None)


def _distill_section(run: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    section = config.get("distill") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}

"""Every model the Studio can open (`model_sources`: runs and their loadable artifacts) and where the
artifacts it makes go. File-system reads only, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from studio.tabs import has_checkpoint, run_names

ARTIFACT_KINDS = ("quantized", "export")


def loadable(folder: Path) -> bool:
    """True when load_model opens `folder`: a quantized artifact, a native checkpoint-style folder, or a
    Hugging Face folder with safetensors weights. Hidden folders are half-written (an export in progress)."""
    if folder.name.startswith(".") or not folder.is_dir():
        return False
    if (folder / "quantization.json").exists():
        return True
    if (folder / "config.yaml").exists() and (folder / "model.safetensors").exists():
        return True
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def run_artifacts(run_dir: Path) -> list[Path]:
    """The loadable artifact folders of one run: quantized first, then exports, each sorted by name."""
    found = []
    for kind in ARTIFACT_KINDS:
        base = run_dir / kind
        if base.is_dir():
            found += [p for p in sorted(base.iterdir()) if loadable(p)]
    return found


def model_sources(runs_dir: str | Path) -> list[tuple[str, str]]:
    """(label, path) of every model to pick: each run (newest first) with a checkpoint, then its artifacts.

    Labels read as paths inside the runs dir ("tiny", "tiny/quantized/int8", "tiny/export/hf"); values are
    absolute folder paths, which load_model and the chat session accept as they are."""
    root = Path(runs_dir)
    sources = []
    for name in run_names(root):
        run = root / name
        if has_checkpoint(run):
            sources.append((name, str(run)))
        sources += [(f"{name}/{p.parent.name}/{p.name}", str(p)) for p in run_artifacts(run)]
    return sources


def source_label(runs_dir: str | Path, path: Optional[str]) -> str:
    """How a model path is shown: relative to the runs dir when inside it, else as given."""
    if not path:
        return ""
    try:
        return Path(path).resolve().relative_to(Path(runs_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def artifact_target(source: str | Path, kind: str, label: str) -> Path:
    """Where an artifact of `kind` ("quantized" | "export") made from `source` goes.

    A run or one of its checkpoints: <run>/<kind>/<label>. An artifact already inside a run (exporting a
    quantized model): <run>/<kind>/<artifact>-<label>, so a run's exports sit in one folder. Anything
    else (a Hugging Face folder elsewhere): a sibling <source>-<label>, as `slm quantize/export` does."""
    source = Path(source)
    if (source / "status.json").exists():
        return source / kind / label
    if source.parent.name == "checkpoints":
        return source.parent.parent / kind / label
    if source.parent.name in ARTIFACT_KINDS and (source.parent.parent / "status.json").exists():
        return source.parent.parent / kind / f"{source.name}-{label}"
    return source.with_name(f"{source.name}-{label}")


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file in an artifact folder, largest first."""
    files = [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()]
    return sorted(files, key=lambda f: (-f[1], f[0]))

"""What a family-tree node opens as in the Chat and Export tabs: the model value and checkpoint tag those tabs'
pickers take for it, or the reason it cannot be opened there (a report card, a GGUF-LoRA bundle, a gone base…).
File-system reads only, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from studio.models import loadable, model_sources
from studio.tabs import has_checkpoint

Target = Union[tuple[str, str], str]  # (model value, checkpoint tag), or why not


def _tag(run: Path) -> str:
    return "best" if (run / "checkpoints" / "best" / "state.json").exists() else "latest"


def _gguf_file(folder: Path) -> Optional[Path]:
    return next(iter(sorted(folder.glob("*.gguf"))), None)


def chat_target(node: dict) -> Target:
    """What Chat loads for a node: a run's checkpoint, a quantized/HF/onnxruntime-genai folder, a GGUF file (Chat
    reads it through transformers), a Hub id; else why not."""
    kind, path = node["kind"], Path(node["path"]) if node.get("path") else None
    if kind == "report":
        return "a report card holds scores, not a model: chat with the model it evaluated (its parent)"
    if kind == "missing" or (path is None and kind != "hub"):
        return "it is gone from disk"
    if kind == "hub":
        return node["name"], "best"  # the Hub id: Chat finds it in the cache (or downloads it when online)
    if node.get("state") is not None:  # a run
        return (str(path), _tag(path)) if has_checkpoint(path) else "the run has no checkpoint yet"
    if path.is_file():
        return (str(path), "best") if path.suffix.lower() == ".gguf" else "not a model file"
    fmt = (node.get("details") or {}).get("format")
    if fmt == "gguf-lora":
        return "a GGUF base + LoRA adapter: Chat applies no GGUF adapter; chat with the LoRA run it came from"
    if fmt == "onnx-graph":
        return "an ONNX graph has no KV cache to chat with: export as ONNX for onnxruntime-genai to chat"
    if fmt == "gguf":
        gguf = _gguf_file(path)
        return (str(gguf), "best") if gguf else "the export holds no .gguf file"
    if fmt == "onnx" or loadable(path):
        return str(path), "best"
    return "Chat cannot load this folder (no checkpoint, quantized or Hugging Face model in it)"


def export_target(node: dict, runs_dir: Path) -> Target:
    """What the Export tab takes for a node: one of its own choices (a run with a checkpoint, a quantized or
    Hugging Face artifact of one), so that the tab keeps it; else why not."""
    kind = node["kind"]
    if kind == "report":
        return "a report card holds scores, not a model: export the model it evaluated (its parent)"
    if kind in ("hub", "folder", "gguf", "missing"):
        return "a base from outside the runs folder: export it from a shell with `slm export PATH`"
    path = Path(node["path"])
    choices = {Path(value).resolve(): value for _, value in model_sources(runs_dir)}
    if path.resolve() in choices:
        return choices[path.resolve()], _tag(path) if node.get("state") is not None else "best"
    if node.get("state") is not None:
        return "the run has no checkpoint yet"
    return "already an export in a file format: export the model it came from in another format"


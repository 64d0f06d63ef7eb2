"""The Quantize, Evaluate and Export tabs' work: slm_core calls run in one helper process per tab
(studio.helper's protocol), answering with plain JSON."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from slm_core.allowlist import AllowList
from slm_core.errors import SLMError
from studio.helper import IDLE_S, Helper
from studio.models import artifact_target, folder_files


class JobHelper(Helper):
    """A studio.helper process whose functions are the jobs below."""

    def __init__(self, runs_dir: Optional[Path] = None, idle_s: float = IDLE_S, allow_list: Optional[AllowList] = None):
        super().__init__(idle_s, module="studio.jobs", runs_dir=runs_dir, allow_list=allow_list)


def progress_to(progress: Any) -> Callable[[dict], None]:
    """The helper's progress messages → a Gradio progress bar (`gr.Progress()` of the event)."""
    def report(p: dict) -> None:
        total = p.get("total") or 0
        progress((p.get("n", 0), total) if total else None, desc=p.get("desc") or "working")
    return report


class _Stages:
    """One tqdm bar whose steps are named stages: the Studio shows '<stage> (i/n)'."""

    def __init__(self, names: list[str]):
        from tqdm import tqdm

        self.names = names
        self.bar = tqdm(total=len(names), desc=names[0], file=sys.stderr, leave=False)
        self.bar.update(0)  # reports the first stage

    def start(self, name: str) -> None:
        self.bar.set_description_str(name, refresh=False)
        self.bar.update(self.names.index(name) - self.bar.n)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _step_of(checkpoint: Path) -> Optional[int]:
    import json

    try:
        return int(json.loads((checkpoint / "state.json").read_text())["step"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


# ---- quantize -----------------------------------------------------------------------------------

REPORT_FILE = "report.json"  # in each quantized artifact's folder: its row and the original's, measured together


def quantize(source: str, tag: str = "best", method: str = "int8", group_size: Optional[int] = 64,
             report: bool = True, eval_tokens: int = 20_000, baseline: Optional[dict] = None) -> dict:
    """Quantize `source` into <run>/quantized/<label>/ (replacing an earlier one of the same label) and,
    with `report`, measure it against the original side by side (slm_core.post.quantize.quantization_report);
    `baseline`: the original's row measured earlier for the same checkpoint and windows, reused."""
    import copy

    from slm_core.models.load import load_model
    from slm_core.models.model import merge_adapter
    from slm_core.models.quantized import check_method, quantize_model, save_quantized
    from slm_core.post.quantize import eval_windows_for, method_label, quantization_report

    group_size = int(group_size) if method == "int4" else None
    check_method(method, group_size)
    stages = _Stages(["loading", "quantizing", "saving"] + (["measuring"] if report else []))
    started = time.perf_counter()
    loaded = load_model(source, tag=tag)
    label = method + (f"-g{group_size}" if group_size else "")
    out = artifact_target(loaded.path, "quantized", label)
    stages.start("quantizing")
    # A LoRA run is compared (and quantized) as its merged model: the same function, a plain Transformer.
    original = merge_adapter(loaded.model)
    quantized = quantize_model(copy.deepcopy(original) if report else original, method, group_size)
    stages.start("saving")
    save_quantized(quantized, loaded.config, loaded.tokenizer, out, source=str(source), overwrite=True)
    rows = None
    if report:
        stages.start("measuring")
        windows = eval_windows_for(loaded, int(eval_tokens))
        paths = {label: out, method_label(original): loaded.path}  # sizes of the files on disk, as report cards
        rows = quantization_report(original, {label: quantized}, windows, paths=paths, baseline=baseline)
        # Kept beside the artifact: the Quantize tab shows every variant's report side by side, not the last one.
        from slm_core.fsio import atomic_write_json

        atomic_write_json(out / REPORT_FILE, {"rows": rows, "measured_at": time.time(), "tag": tag})
    stages.close()
    return {"path": str(out), "label": label, "step": _step_of(Path(loaded.path)), "rows": rows,
            "files": folder_files(out), "seconds": time.perf_counter() - started}


# ---- evaluate -----------------------------------------------------------------------------------

def evaluate(sources: list[str], tag: str = "best", data: Optional[str] = None, split: str = "val",
             stride: Optional[int] = None, max_tokens: Optional[int] = None,
             text_column: Optional[str] = None) -> list[dict]:
    """Perplexity of each model on `data` (None: each model's own validation data), one row per model.
    A model that cannot be evaluated gets a row with its `error` instead of stopping the others."""
    from tqdm import tqdm

    from slm_core.errors import SLMError
    from slm_core.models.load import load_model
    from slm_core.post.evaluate import perplexity

    rows = []
    bar = tqdm(total=len(sources), desc="evaluating", file=sys.stderr, leave=False)
    bar.update(0)
    for source in sources:
        try:
            loaded = load_model(source, tag=tag)
            row = perplexity(loaded, data or None, None if split == "auto" else split, int(stride) if stride else None,
                             int(max_tokens) if max_tokens else None, text_column or None)
        except SLMError as error:
            row = {"error": str(error)}
        rows.append({**row, "source": source})
        bar.update(1)
    bar.close()
    return rows


# ---- export -------------------------------------------------------------------------------------

def export(source: str, tag: str = "best", fmt: str = "hf", gguf_type: str = "f16",
           destination: Optional[str] = None, name: str = "model") -> dict:
    """Write `source` as `fmt` into <run>/export/<label>/ (replacing an earlier one of the same label), or into a
    new folder <destination>/<name>-<label> (a folder the person chose: nothing in it is replaced)."""
    from slm_core.models.load import load_model
    from slm_core.post.export import export_model

    label = fmt + (f"-{gguf_type}" if fmt.startswith("gguf") else "")
    chosen = Path(destination).expanduser() / f"{name}-{label}" if destination else None
    if chosen is not None and chosen.exists():  # said before the model loads
        raise SLMError(f"{chosen} already exists: delete it, or choose another destination folder")
    stages = _Stages(["loading", "writing"])
    started = time.perf_counter()
    loaded = load_model(source, tag=tag)
    out = chosen or artifact_target(loaded.path, "export", label)
    stages.start("writing")
    paths = export_model(loaded.model, loaded.tokenizer, loaded.config, out, fmt, gguf_type, source=str(source),
                         overwrite=not destination)
    stages.close()
    return {"dir": str(out), "chosen_dir": bool(destination), "format": fmt,
            "gguf_type": gguf_type if fmt.startswith("gguf") else None,
            "files": [(str(p), p.stat().st_size) for p in paths], "template": loaded.template,
            "seconds": time.perf_counter() - started, "quality": _gguf_quality(loaded, paths, fmt, gguf_type)}


def _gguf_quality(loaded, paths: list, fmt: str, gguf_type: str) -> Optional[dict]:
    """The GGUF level's size/quality table (slm_core.post.gguf_quality), or why it could not be measured."""
    if fmt != "gguf":
        return None
    from slm_core.errors import SLMError
    from slm_core.post.export import plain_float_model
    from slm_core.post.gguf_quality import quality_table

    gguf_path = next(p for p in paths if p.suffix == ".gguf")
    try:
        return {"rows": quality_table(loaded, plain_float_model(loaded.model), gguf_path, gguf_type)}
    except (SLMError, OSError, ValueError) as error:  # the export stands; e.g. a folder with no data of its own
        return {"error": str(error)}


# ---- report cards ---------------------------------------------------------------------------------

def report_cards(sources: list[str], tag: str = "best", tasks: Optional[list[str]] = None,
                 limit: Optional[int] = None, judge: Optional[dict] = None) -> dict:
    """A report card per model (slm_core.post.report_card), saved beside each model; `judge`: {"url",
    "model", "key", "prompts", "limit", "seed"} or None. A model that fails gets a row with its
    `error` instead of stopping the others."""
    from tqdm import tqdm

    from slm_core.errors import SLMError
    from slm_core.post.judge import Endpoint
    from slm_core.post.report_card import model_card, save_card, to_markdown

    settings = None
    if judge and judge.get("url"):
        settings = {"endpoint": Endpoint(judge["url"], judge.get("model") or "", judge.get("key") or None,
                                         timeout_s=float(judge.get("timeout") or 60)),
                    "prompts": judge.get("prompts") or None, "limit": int(judge.get("limit") or 20),
                    "seed": int(judge.get("seed") or 0)}
    bar = tqdm(total=len(sources), desc="report cards", file=sys.stderr, leave=False)
    bar.update(0)
    cards, errors = [], []
    for source in sources:
        def say(text: str) -> None:
            bar.set_description_str(text[:80], refresh=False)
            bar.update(0)

        try:
            card = model_card(source, tag, tasks or None, limit, settings, on_progress=say)
            card["files"] = save_card(card)
            cards.append(card)
        except SLMError as error:
            errors.append({"source": source, "error": str(error)})
        bar.update(1)
    bar.close()
    return {"cards": cards, "errors": errors, "markdown": to_markdown(cards) if cards else ""}


FUNCTIONS: dict[str, Callable[..., Any]] = {"quantize": quantize, "evaluate": evaluate, "export": export,
                                            "report_cards": report_cards}


if __name__ == "__main__":
    from studio import helper

    helper.FUNCTIONS.update(FUNCTIONS)
    helper.main()

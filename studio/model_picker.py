"""The model picker's extra sources (the Hugging Face cache), its details (what a model is, what it needs
here) and its download with progress, without torch in the server."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core.errors import SLMError
from slm_core.models.sources import cached_snapshot, is_hub_id, list_cached_models, weight_stats
from slm_core.system import format_bytes, format_count, format_mb
from slm_core.train.chain import PREFIX as START_RECIPE
from studio.style import mark

TRAINING_LABELS = {"lora": "LoRA", "qlora-int8": "QLoRA, int8 base", "qlora-int4": "QLoRA, int4 base",
                   "finetune": "Full fine-tune"}
_DOWNLOADER = None  # the helper process downloads run in (separate from the estimate's, so neither waits)


def hub_choices() -> list[tuple[str, str]]:
    """(label, Hub id) for each complete model in the Hugging Face cache, newest first."""
    seen, choices = set(), []
    for model in list_cached_models():
        if model.complete and model.repo_id not in seen:
            seen.add(model.repo_id)
            choices.append((f"{model.repo_id} (Hugging Face cache)", model.repo_id))
    return choices


def describe_model(folder: str | Path) -> dict:
    """family, parameters, context, dtype, disk_bytes of a Hugging Face folder (a cache snapshot too)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    stats = weight_stats(folder)
    return {"family": (config.get("architectures") or [config.get("model_type", "?")])[0],
            "parameters": stats["parameters"],
            "context": config.get("max_position_embeddings") or config.get("n_positions"),
            "dtype": stats["dtype"], "disk_bytes": stats["disk_bytes"]}


def describe_line(folder: str | Path) -> str:
    """'LlamaForCausalLM · 1.24B parameters · context 131,072 · bf16 · 2.47 GB on disk'."""
    info = describe_model(folder)
    params = info["parameters"]
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    context = f"{info['context']:,}" if info["context"] else "?"
    return (f"{info['family']} · {count} parameters · context {context} · {info['dtype']} · "
            f"{info['disk_bytes'] / 1e9:.2f} GB on disk")


# ---- the estimate ---------------------------------------------------------------------------------

def estimate_markdown(est: dict) -> str:
    """slm_core.models.memory.estimate's result as the picker's details: the model in one line, then what
    chatting and each way of training it needs, and whether that fits here."""
    f, chat = est["facts"], est["chat"]
    on_gpu = str(est.get("device", "cpu")).startswith("cuda")
    where = "the GPU" if on_gpu else "RAM"
    free = f"{format_mb(est['available_mb'])} free in {where}" if est.get("available_mb") is not None \
        else f"free {where} unknown"

    def fit(ok: Optional[bool]) -> str:
        return "—" if ok is None else (f"{mark('ok')} fits" if ok else f"{mark('error')} does not fit")

    head = (f"**{f['name']}** · {f['family']} · {format_count(f['parameters'])} parameters · context "
            f"{f['context']:,} · {f['dtype']} · {f['disk_bytes'] / 1e9:.2f} GB on disk")
    rows = [(f"Chat ({chat['dtype']} weights, KV cache of {chat['cache']:,} tokens × {chat['slots']} "
             f"conversations)", chat["mb"], chat["fits"])]
    for row in est["training"]:
        label = TRAINING_LABELS.get(row["what"], row["what"])
        if row["what"] != "finetune":
            label += f" ({format_count(row['trainable'])} trainable)"
        rows.append((label, row["mb"], row["fits"]))
    table = "| On this machine | Memory | " + free + " |\n|---|---|---|\n"
    table += "\n".join(f"| {what} | **{format_mb(mb)}** | {fit(ok)} |" for what, mb, ok in rows)
    setting = (f"Training figures: batch {est['batch_size']} × context {est['context']:,} tokens, "
               f"{'the GPU' if on_gpu else 'CPU'}; lower them (Train tab) to need less.")
    notes = " ".join([setting, *est.get("notes", [])])
    return f"{head}\n\n{table}\n\n_{notes}_"


def details(helper, spec: Optional[str], runs_dir: Path, train: Optional[dict] = None) -> str:
    """The picker's details for `spec`: the estimate table, or what to do (download it, fix the path)."""
    spec = (spec or "").strip()
    if not spec:
        return ""
    if spec.startswith(START_RECIPE):  # slm_core.train.chain: the run trains that recipe first, then starts from it
        return (f"{mark('info')} Made first: recipe **{spec[len(START_RECIPE):].strip()}** trains as the run "
                f"`<this run>-start` (resumed or reused when it exists), then this run starts from it.")
    if is_hub_id(spec) and not (Path(runs_dir) / spec).is_dir():
        repo_id, _, revision = spec.partition("@")
        if cached_snapshot(repo_id, revision or "main") is None:
            return (f"{mark('info')} **{repo_id}** is not downloaded yet: press **Download** to fetch it from the "
                    f"Hugging Face Hub (only config, tokenizer and safetensors weights).")
    train = train or {}
    try:
        est = helper.call("model_estimate", {
            "spec": spec, "runs_dir": str(runs_dir), "batch_size": int(train.get("train.batch_size") or 1),
            "context": int(train.get("model.context_length") or 2048),
            "precision": train.get("train.precision") or "auto",
            "grad_checkpointing": bool(train.get("train.grad_checkpointing")),
            "lora_r": int(train.get("lora.r") or 8), "lora_targets": train.get("lora.targets") or "attention"})
    except SLMError as error:
        return f"{mark('warn')} {error}"
    return estimate_markdown(est)


# ---- the download -------------------------------------------------------------------------------

def progress_text(spec: str, bars: dict[str, dict]) -> str:
    """One line from huggingface_hub's progress bars (by description, their latest {n, total, desc}): the
    bytes written of the total announced so far, and the files done of those fetched."""
    files = next((b for d, b in bars.items() if d.startswith("Fetching")), None)
    written = next((b for d, b in bars.items() if d.startswith("Reconstruct")), None)
    moved = next((b for d, b in bars.items() if d.startswith("Downloading")), None)
    size = written if written and written.get("n") else moved
    parts = []
    if size and size.get("total"):
        done, total = size.get("n") or 0, size["total"]
        parts.append(f"{format_bytes(done)} of {format_bytes(total)} ({100 * done / total:.0f}%)")
    elif size and size.get("n"):
        parts.append(f"{format_bytes(size['n'])}")
    if files and files.get("total"):
        parts.append(f"{int(files.get('n') or 0)} of {int(files['total'])} files done")
    what = " · ".join(parts) or "asking the Hub for the file list…"
    return f"{mark('info')} Downloading **{spec}**: {what}"


def download(spec: Optional[str], helper=None, poll_s: float = 0.5) -> Iterator[str]:
    """Fetch a Hub id in a helper process; yields a progress line about twice a second, then the result
    (the model described) or the refusal (offline: what the cache holds)."""
    spec = (spec or "").strip()
    if not spec or not is_hub_id(spec):
        yield f"{mark('error')} Type a Hub id such as Qwen/Qwen2.5-0.5B-Instruct to download it."
        return
    helper = helper or _downloader()
    updates: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["result"] = helper.call("download", {"spec": spec}, on_progress=updates.put)
        except SLMError as error:
            outcome["error"] = str(error)
        except Exception as error:  # noqa: BLE001 - the page shows it and stays up
            outcome["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    bars: dict[str, dict] = {}
    yield progress_text(spec, bars)
    while thread.is_alive():
        thread.join(poll_s)
        changed = False
        while not updates.empty():
            bar = updates.get()
            bars[bar.get("desc") or ""] = bar
            changed = True
        if changed and thread.is_alive():
            yield progress_text(spec, bars)
    if "error" in outcome:
        yield f"{mark('error')} {outcome['error']}"
        return
    folder = outcome["result"]["path"]
    yield f"{mark('ok')} Downloaded **{spec}** to `{folder}`: {describe_line(folder)}"


def _downloader():
    global _DOWNLOADER
    if _DOWNLOADER is None:
        from studio.helper import Helper

        _DOWNLOADER = Helper(idle_s=30.0)
    return _DOWNLOADER


# ---- the picker's panel on a page -------------------------------------------------------------------

ESTIMATE_KEYS = ("train.batch_size", "model.context_length", "train.precision", "train.grad_checkpointing",
                 "lora.r", "lora.targets")


def chat_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """What Chat and Compare offer: every run and its artifacts (studio.models), then the cached Hub models."""
    from studio.models import model_sources

    return model_sources(runs_dir) + hub_choices()


def picker_choices(runs_dir: Path) -> list[tuple[str, str]]:
    """Runs with a checkpoint (by folder), then the Hugging Face cache's models (by Hub id)."""
    from studio.tabs import run_names

    runs = [(name, str(Path(runs_dir) / name)) for name in run_names(Path(runs_dir), with_checkpoint=True)]
    return runs + hub_choices()


def build_panel(ctx, dropdown, elem_id: str) -> dict:
    """Under `dropdown` (a model picker): its details (the model and the memory it needs here, following the
    Train tab's batch, context and LoRA settings) and a Download button with progress for a Hub id. Set
    panel["allow"] (a studio.allow.AllowBox) before the page is finished to offer a refused folder there."""
    import gradio as gr

    from studio.security import check_path
    from studio.tabs import FORM_TRIGGER, PRIVATE, QUIET

    fetch = gr.Button("Download from the Hub", size="sm", elem_id=f"{elem_id}-download")
    info = gr.Markdown("", elem_id=f"{elem_id}-details", elem_classes="slm-estimate")  # full width: a table
    panel = {"details": info, "download": fetch, "allow": None}

    def wire(ctx) -> None:
        keys = [k for k in ESTIMATE_KEYS if k in ctx.fields]

        def show(spec, *values):
            return details(ctx.helper, check_path(ctx, spec, "model"), ctx.runs_dir, dict(zip(keys, values)))

        def fetch_model(spec, *values):
            line = ""
            for line in download(check_path(ctx, spec, "model")):
                yield line
            if line.startswith(mark("ok")):  # downloaded: what it needs here, as for any picked model
                yield show(spec, *values)

        inputs = [dropdown, *[ctx.fields[k] for k in keys]]
        shown = gr.on([c.change for c in inputs], show, inputs, info, trigger_mode=FORM_TRIGGER, **QUIET)
        fetched = fetch.click(fetch_model, inputs, info, concurrency_limit=2, concurrency_id="model-download",
                              **PRIVATE)
        allow = panel["allow"]
        if allow is not None:
            for event in (shown, fetched):
                allow.after(event, [("model", dropdown)])
            allow.on_allowed(show, inputs, info)  # a picker's details cannot be "run again" by hand

    ctx.finalizers.append(wire)
    return panel

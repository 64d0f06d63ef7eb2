"""Model tab: a preset's shape, edited, with its parameters, memory, token budget and step time; or a real
model and what chatting and fine-tuning it need on this machine."""

from __future__ import annotations

import re
from typing import Any, Optional

import gradio as gr

from slm_core.config import list_presets, load_model_preset, preset_description
from slm_core.errors import SLMError
from slm_core.system import format_count, format_mb
from studio import model_browser
from studio.allow import AllowBox
from studio.command import MODEL_FIELDS, model_from_fields
from studio.desktop.browse import add_browse
from studio.model_picker import build_panel, picker_choices
from studio.style import mark
from studio.tabs import FORM_TRIGGER, QUIET
from studio.views import human_duration

TITLE = "Model"
DEFAULT_PRESET = "tiny-llama"

LABELS = {
    "family": ("Family", "GPT-2 style (learned positions, LayerNorm, GELU) or Llama style (RoPE, RMSNorm, SwiGLU)"),
    "n_layer": ("Layers", "Transformer blocks"),
    "n_head": ("Attention heads", "must divide the width"),
    "n_kv_head": ("KV heads", "fewer than heads = grouped-query attention; must divide the heads"),
    "d_model": ("Width (d_model)", "size of each token's vector"),
    "d_ff": ("FFN width", "0 = the family's default (4× or Llama's 8/3× width)"),
    "context_length": ("Context (tokens)", "longest sequence the model sees"),
    "vocab_size": ("Vocabulary", "0 = taken from the tokenizer when the run starts"),
    "dropout": ("Dropout", "0 for short pretraining; 0.1–0.2 against overfitting on small data"),
}
FIELD_ERROR = re.compile(r"^model\.(\w+)=")


def _field(key: str, value: Any) -> gr.components.Component:
    label, info = LABELS[key]
    if key == "family":
        return gr.Dropdown(["gpt2", "llama"], value=value, label=label, info=info)
    if key == "dropout":
        return gr.Number(value=value, label=label, info=info, minimum=0, maximum=0.9, step=0.05)
    return gr.Number(value=value, label=label, info=info, precision=0, minimum=0 if key in ("vocab_size", "d_ff") else 1)


def preset_values(name: str) -> list[Any]:
    """The preset's shape; the vocabulary is left to the tokenizer (the Data tab decides it)."""
    config = load_model_preset(name)
    return [0 if key == "vocab_size" else getattr(config, key) for key in MODEL_FIELDS]


def build(ctx) -> None:
    preset0 = DEFAULT_PRESET if DEFAULT_PRESET in list_presets("models") else list_presets("models")[0]
    values0 = dict(zip(MODEL_FIELDS, preset_values(preset0)))
    with gr.Row():
        preset = gr.Dropdown(list_presets("models"), value=preset0, label="Model preset", scale=1,
                             info="everything in presets/models/; edit any field below")
        about = gr.Markdown(preset_description("models", preset0), elem_classes="slm-note")
    errors: dict[str, gr.Markdown] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            for row in (MODEL_FIELDS[:3], MODEL_FIELDS[3:6], MODEL_FIELDS[6:]):
                with gr.Row():
                    for key in row:
                        with gr.Column(min_width=160):
                            ctx.fields[f"model.{key}"] = _field(key, values0[key])
                            errors[key] = gr.Markdown("", elem_classes="slm-field-error")
        with gr.Column(scale=2):
            estimate = gr.Markdown("", elem_classes="slm-estimate", elem_id="model-estimate")
    with gr.Accordion("A real model: what it needs to chat, LoRA, QLoRA or fine-tune here", open=True):
        real = gr.Dropdown([], value=None, allow_custom_value=True, label="Real model", elem_id="model-real",
                           info="a Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct), a cached model, a Hugging Face folder "
                                "or a run; the Train tab's batch, context and LoRA rank set the training figures")
        add_browse(ctx, real, "folder")  # desktop app only: the system's dialog
        panel = build_panel(ctx, real, "model-real")
        model_browser.build(ctx, real, panel["details"], "model-find")
        # A model folder outside the allowed ones: allow it, or its parent (a folder of models) in one click.
        panel["allow"] = AllowBox(ctx, "model-allow", parent=True, retried=True)
    ctx.on_load.append(dict(fn=lambda: gr.update(choices=picker_choices(ctx.runs_dir)), outputs=real))
    ctx.shared["model.preset"] = preset
    model_fields = [ctx.fields[f"model.{k}"] for k in MODEL_FIELDS]
    preset.input(preset_values, inputs=preset, outputs=model_fields, **QUIET)
    preset.change(lambda name: preset_description("models", name) if name else "", preset, about, **QUIET)
    ctx.shared["model.errors"] = errors
    ctx.finalizers.append(lambda c: _wire_estimate(c, preset, model_fields, estimate, errors))


def _wire_estimate(ctx, preset, model_fields, estimate, errors) -> None:
    """After every tab exists: the estimate also follows the Train tab's batch, precision, checkpointing
    and mode (LoRA trains only its adapters)."""
    extra = [ctx.fields[k] for k in TRAIN_KEYS if k in ctx.fields]
    keys = [k for k in TRAIN_KEYS if k in ctx.fields]
    if "launch.nproc" in ctx.shared:  # the Train tab's process count: the estimate is per process
        extra.append(ctx.shared["launch.nproc"])
        keys.append("launch.nproc")
    inputs = [preset, *model_fields, *extra]
    outputs = [estimate, *errors.values()]

    def update(name, *values):
        fields = dict(zip(MODEL_FIELDS, values[: len(MODEL_FIELDS)]))
        train = dict(zip(keys, values[len(MODEL_FIELDS):]))
        text, bad = estimate_text(ctx.helper, name, tokenizer_vocab(fields, train), train)
        return [text, *[bad.get(key, "") for key in errors]]

    gr.on([c.change for c in inputs], update, inputs=inputs, outputs=outputs, trigger_mode=FORM_TRIGGER, **QUIET)
    ctx.on_load.append(dict(fn=update, inputs=inputs, outputs=outputs))


TRAIN_KEYS = ("train.batch_size", "train.grad_accum", "train.precision", "train.grad_checkpointing", "train.mode",
              "lora.r", "lora.targets", "tokenizer.kind", "tokenizer.vocab_size", "train.strategy")
GPT2_VOCAB = 50257


def tokenizer_vocab(fields: dict, train: dict) -> dict:
    """The model fields with the vocabulary the Data tab's tokenizer will give (the field's 0 means "from the
    tokenizer"): GPT-2's 50,257, or the BPE size asked for. A character vocabulary is known only after
    tokenizing; the estimate then says what it assumed."""
    if fields.get("vocab_size"):
        return fields
    kind = train.get("tokenizer.kind")
    vocab = GPT2_VOCAB if kind == "gpt2" else int(train.get("tokenizer.vocab_size") or 0) if kind == "bpe" else 0
    return {**fields, "vocab_size": vocab} if vocab else fields


def estimate_text(helper, preset: Optional[str], fields: dict, train: dict) -> tuple[str, dict[str, str]]:
    """(Markdown estimate, {field: error}) for the shape on the page."""
    try:
        config = model_from_fields(preset, fields)
        info = _describe(helper, config, train)
    except SLMError as error:
        match = FIELD_ERROR.match(str(error))
        if match and match.group(1) in LABELS:
            bad = {match.group(1): f"{mark('warn')} {error}"}
            if "number of heads" in str(error):  # a divisibility problem belongs to both fields
                bad.setdefault("n_head", bad[match.group(1)])
            return "Fix the highlighted field to see the estimate.", bad
        return f"{mark('warn')} {error}", {}
    from slm_core.system import gpu_info, system_memory

    return format_estimate(info, system_memory(), gpu_info()), {}


def _describe(helper, config, train: dict) -> dict:
    """slm_core.models.estimate.describe in the helper process (it builds the model on torch's meta device)."""
    mode = train.get("train.mode") or "pretrain"
    lora = {"r": int(train.get("lora.r") or 8), "targets": train.get("lora.targets") or "attention"} \
        if mode == "lora" else None
    grad_accum = int(train.get("train.grad_accum") or 1)
    info = helper.call("describe", {
        "model": config.to_dict(), "batch_size": int(train.get("train.batch_size") or 16),
        "precision": train.get("train.precision") or "auto",
        "grad_checkpointing": bool(train.get("train.grad_checkpointing")), "grad_accum": grad_accum,
        "mode": mode, "lora": lora, "timing": True, "strategy": train.get("train.strategy") or "ddp",
        "nproc": int(train.get("launch.nproc") or 1)})
    return {**info, "grad_accum": grad_accum}


def format_estimate(info: dict, memory: dict, gpus: list[dict]) -> str:
    """describe()'s figures as a table, saying whether they fit the memory found on this machine."""
    params, train, infer = info["params"], info["training"], info["inference"]
    on_gpu = str(train.get("device", "cpu")).startswith("cuda") and gpus
    if on_gpu:
        where = f"the GPU ({gpus[0]['name']}, {format_mb(gpus[0]['free_mb'])} free)"
    else:
        where = f"RAM ({format_mb(memory['available_mb'])} free of {format_mb(memory['total_mb'])})"
        where += "" if gpus else "; no GPU found, training runs on the CPU"

    def fit(ok):
        return "—" if ok is None else (f"{mark('ok')} fits" if ok else f"{mark('error')} does not fit")

    trainable = params.get("trainable", params["total"])
    rows = [
        ("Parameters", f"**{format_count(params['total'])}** ({format_count(params.get('non_embedding'))} "
                       f"outside embeddings)" + (f"; {format_count(trainable)} trainable" if trainable != params["total"]
                                                 else "")),
        (f"Training memory (batch {train.get('batch_size')}, context {train.get('context')}, "
         f"{'bf16/fp16 autocast' if train.get('autocast') else 'fp32'}"
         f"{', checkpointing' if train.get('grad_checkpointing') else ''}"
         f"{per_process(train)})",
         f"**{format_mb(train['total_mb'])}** — {fit(info.get('fits_training'))} in {where}"),
        ("Inference memory (batch 1, full context)",
         f"{format_mb(infer['total_mb'])} fp32 · {format_mb(info.get('inference_bf16', infer)['total_mb'])} bf16 — "
         f"{fit(info.get('fits_inference'))}"),
    ]
    rows += _budget_rows(info)
    table = "| On this machine | Estimate |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    notes = " ".join(info.get("notes") or [])
    return table + (f"\n\n_{notes}_" if notes else "")


def per_process(train: dict) -> str:
    """', per process: FSDP over 4' when several processes share the run (the figure is one process's)."""
    world = train.get("world_size") or 1
    return f", per process: {str(train.get('strategy', 'ddp')).upper()} over {world}" if world > 1 else ""


def _budget_rows(info: dict) -> list[tuple[str, str]]:
    train, step = info["training"], info.get("step") or {}
    budget = info.get("compute_optimal_tokens")
    tokens_per_step = (train.get("batch_size") or 1) * (train.get("context") or 1) * (info.get("grad_accum") or 1)
    rows = []
    if budget:
        steps = max(1, round(budget / tokens_per_step))
        rows.append(("Compute-optimal budget (≈20 tokens/param)",
                     f"{format_count(budget)} tokens ≈ {steps:,} steps of {tokens_per_step:,} tokens"))
    if step.get("step_s"):
        total = step["step_s"] * budget / tokens_per_step if budget else 0
        if step.get("measured"):
            what = (f"Time per step, measured now on this machine ({step['timed_rows']} of the batch's rows timed, "
                    f"best of 2 steps after a warm-up)")
        else:
            what = "Time per step, estimated from a matrix-multiply benchmark (one row would take too long to time)"
        rows.append((what, f"**{step['step_s']:.2f} s** ({step['tokens_per_s']:,.0f} tokens/s"
                     + (f"; the whole budget ≈ {human_duration(total)})" if total else ")")))
    return rows

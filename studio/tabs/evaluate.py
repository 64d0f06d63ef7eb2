"""Evaluate tab: perplexity of several models on the same data in one table (originals beside their quantized
and exported versions), computed in the tab's helper process (studio.jobs)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio import report_panel
from studio.allow import AllowBox
from studio.command import runs_dir_flag
from studio.desktop.browse import add_browse
from studio.jobs import JobHelper, progress_to
from studio.models import model_sources, source_label
from studio.security import check_path
from studio.tabs import QUIET, message

TITLE = "Evaluate"
COLUMNS = ["model", "data", "tokens", "loss", "perplexity", "seconds"]


def build(ctx) -> None:
    helper = JobHelper(ctx.runs_dir, allow_list=ctx.paths)
    with gr.Row():
        models = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Models", scale=4,
                             elem_id="evaluate-models",
                             info="runs and their quantized / exported versions, or a model folder's path")
        add_browse(ctx, models, "folder")  # desktop app only: the system's dialog (adds to the list)
        tag = gr.Radio(["best", "latest"], value="best", label="Checkpoint (runs)", scale=1)
    with gr.Row():
        data = gr.Textbox("", label="Data", scale=3, elem_id="evaluate-data",
                          placeholder="blank: each model's own validation data",
                          info="a file or folder (e.g. ../shared/data/tinyshakespeare.txt), or 'builtin'")
        add_browse(ctx, data, "file")
        split = gr.Radio([("auto", "auto"), ("validation", "val"), ("training", "train"), ("all", "all")],
                         value="auto", label="Split", scale=1,
                         info="auto: the model's own validation split, or all of the data you name")
    with gr.Row():
        # No minimum: a cleared number field arrives as 0, which means "the default" here.
        stride = gr.Number(None, precision=0, label="Stride (tokens)", info="blank or 0: half a context")
        max_tokens = gr.Number(50_000, precision=0, label="Max tokens per model", info="blank or 0: all of them")
    go = gr.Button("Evaluate", variant="primary", elem_id="evaluate-go")
    allow = AllowBox(ctx, "evaluate-allow")
    status = gr.Markdown("", elem_id="evaluate-message")
    table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="evaluate-table")
    command = gr.Markdown("", elem_classes="slm-note")

    def work(picked, checkpoint, source, part, step, limit, progress=gr.Progress()):
        check_path(ctx, picked, "model")
        check_path(ctx, source, "data")
        return evaluate_models(helper, ctx.runs_dir, picked, checkpoint, source, part, step, limit,
                               on_progress=progress_to(progress))

    done = go.click(work, [models, tag, data, split, stride, max_tokens], [status, table, command],
                    api_name="evaluate", concurrency_limit=1, concurrency_id="evaluate")
    allow.after(done, [("model", models), ("data", data)])
    report_panel.build(ctx, models, tag)

    def choices(current: Optional[list] = None):
        sources = model_sources(ctx.runs_dir)
        paths = {path for _, path in sources}
        keep = [c for c in current or [] if c in paths]
        return gr.update(choices=sources, value=keep or [path for _, path in sources[:1]])

    ctx.tabs[TITLE].select(choices, models, models, **QUIET)
    ctx.on_load.append(dict(fn=choices, inputs=models, outputs=models))


def evaluate_models(helper: JobHelper, runs_dir: Path, sources: Optional[list], tag: str, data: Optional[str],
                    split: str, stride: Any, max_tokens: Any,
                    on_progress: Optional[Callable[[dict], None]] = None) -> list[Any]:
    """(message, table rows, equivalent command) for the picked models."""
    if not sources:
        return [message("error", "Pick one or more models first."), [], ""]
    data = (data or "").strip() or None
    args = {"sources": [str(s) for s in sources], "tag": tag, "data": data, "split": split,
            "stride": int(stride) if stride and stride > 0 else None,
            "max_tokens": int(max_tokens) if max_tokens and max_tokens > 0 else None}
    try:
        rows = helper.call("evaluate", args, on_progress=on_progress)
    except (SLMError, RuntimeError) as error:
        return [message("error", str(error)), [], ""]
    failed = [r for r in rows if r.get("error")]
    table = result_table(runs_dir, [r for r in rows if not r.get("error")])
    if failed:
        text = message("error", " ".join(f"`{source_label(runs_dir, r['source'])}`: {r['error']}" for r in failed))
    else:
        text = message("ok", f"Evaluated {len(rows)} model{'s' if len(rows) > 1 else ''}; lower perplexity is better.")
    return [text, table, command_line(runs_dir, args)]


def result_table(runs_dir: Path, rows: list[dict]) -> list[list[Any]]:
    return [[source_label(runs_dir, r["source"]), _data_label(r.get("data")), f"{r['tokens']:,}",
             f"{r['loss']:.4f}", f"{r['ppl']:.3f}", f"{r['seconds']:.1f}"] for r in rows]


def _data_label(source: Optional[str]) -> str:
    if not source:
        return "-"
    return source if source.startswith("builtin") else Path(source).name or source


def command_line(runs_dir: Path, args: dict) -> str:
    parts = ["slm", "eval", *[source_label(runs_dir, s) for s in args["sources"]], *runs_dir_flag(runs_dir)]
    if args["data"]:
        parts += ["--data", args["data"]]
    if args["split"] != "auto":
        parts += ["--split", args["split"]]
    for flag, key in (("--stride", "stride"), ("--max-tokens", "max_tokens")):
        if args[key]:
            parts += [flag, str(args[key])]
    if args["tag"] != "best":
        parts += ["--checkpoint", args["tag"]]
    return "From a shell: `" + " ".join(shlex.quote(p) for p in parts) + "`"

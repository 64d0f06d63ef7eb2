"""Quantize tab: an int8 / int4 / int8-dynamic artifact of a run's checkpoint, made in the tab's helper
process, and its size, memory, perplexity and speed beside the original's."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from slm_core.errors import SLMError
from slm_core.run.runs import read_json
from slm_core.system import format_bytes
from studio.allow import AllowBox
from studio.command import runs_dir_flag
from studio.desktop.browse import add_browse
from studio.jobs import JobHelper, progress_to
from studio.models import run_artifacts, source_label
from studio.security import check_path
from studio.tabs import QUIET, message, run_names

TITLE = "Quantize"

# slm_core.models.quantized's METHODS and GROUP_SIZES: that module imports torch, the server does not (a test
# checks these agree).
METHODS = ("int8", "int4", "int8-dynamic")
GROUP_SIZES = (32, 64, 128, 256)
METHOD_CHOICES = [("int8 — weight-only, about a quarter of fp32, nearly lossless", "int8"),
                  ("int4 — weight-only in groups, smaller still, some loss", "int4"),
                  ("int8-dynamic — torch.ao dynamic int8 (CPU only)", "int8-dynamic")]
REPORT_COLUMNS = ["model", "size on disk", "memory", "validation perplexity", "tokens/s (batch 1)"]
# The original's measurement per (run, checkpoint and its stamp, validation tokens), for this Studio's life: a second
# quantization reuses it, so every variant's ratios are against the same figures the table shows for the original.
ORIGINALS: dict[tuple, dict] = {}


def build(ctx) -> None:
    helper = JobHelper(ctx.runs_dir, allow_list=ctx.paths)
    with gr.Row():
        run = gr.Dropdown([], value=None, allow_custom_value=True, label="Run", scale=3, elem_id="quantize-run",
                          info="a run with a checkpoint (or its folder)")
        add_browse(ctx, run, "folder")  # desktop app only: the system's dialog
        tag = gr.Radio(["best", "latest"], value="best", label="Checkpoint", scale=1)
    with gr.Row():
        method = gr.Radio(METHOD_CHOICES, value="int8", label="Method", scale=3, elem_id="quantize-method")
        group = gr.Dropdown(list(GROUP_SIZES), value=64, label="Group size (int4)", visible=False, scale=1,
                            info="weights per scale: smaller = more accurate, larger file")
    with gr.Row():
        report = gr.Checkbox(True, label="Compare with the original (size, memory, perplexity, speed)", scale=3)
        tokens = gr.Number(20_000, precision=0, label="Validation tokens for perplexity", scale=1,
                           info="blank or 0: 20,000")
    go = gr.Button("Quantize", variant="primary", elem_id="quantize-go")
    allow = AllowBox(ctx, "quantize-allow")
    status = gr.Markdown("", elem_id="quantize-message")
    table = gr.Dataframe(headers=REPORT_COLUMNS, value=[], interactive=False, wrap=True, elem_id="quantize-report")
    command = gr.Markdown("", elem_classes="slm-note")
    existing = gr.Markdown("", elem_id="quantize-existing")

    def work(name, checkpoint, how, size, measure, eval_tokens, progress=gr.Progress()):
        return quantize_run(helper, ctx.runs_dir, check_path(ctx, name, "model"), checkpoint, how, size, measure,
                            eval_tokens, on_progress=progress_to(progress))

    done = go.click(work, [run, tag, method, group, report, tokens], [status, table, command, existing],
                    api_name="quantize", concurrency_limit=1, concurrency_id="quantize")
    allow.after(done, [("model", run)])
    method.change(lambda m: gr.update(visible=m == "int4"), method, group, **QUIET)
    def picked(name):
        name = check_path(ctx, name, "model")
        run_dir = Path(ctx.runs_dir) / name if name else None
        rows = accumulated_report(run_dir) if run_dir is not None and run_dir.is_dir() else []
        return artifacts_markdown(ctx.runs_dir, name), report_table(rows)  # what was measured before, too

    run.change(picked, run, [existing, table], **QUIET)

    def choices(current: Optional[str] = None):
        names = run_names(ctx.runs_dir, with_checkpoint=True)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    ctx.tabs[TITLE].select(choices, run, run, **QUIET)
    ctx.on_load.append(dict(fn=choices, inputs=run, outputs=run))


def quantize_run(helper: JobHelper, runs_dir: Path, name: Optional[str], tag: str, method: str,
                 group_size: Any, report: bool, eval_tokens: Any,
                 on_progress: Optional[Callable[[dict], None]] = None) -> list[Any]:
    """Quantize one run in the helper: (message, report rows, equivalent command, the run's artifacts)."""
    if not name:
        return [message("error", "Pick a run with a checkpoint first (train one in the Train tab)."), [], "", ""]
    if method not in METHODS:
        return [message("error", f"Pick a method: {', '.join(METHODS)}."), [], "", ""]
    size = int(group_size or 64)
    args = {"source": str(Path(runs_dir) / name), "tag": tag, "method": method, "group_size": size,
            "report": bool(report), "eval_tokens": max(256, int(eval_tokens or 20_000))}
    key = original_key(Path(runs_dir) / name, tag, args["eval_tokens"])
    if report and key in ORIGINALS:
        args["baseline"] = ORIGINALS[key]
    try:
        result = helper.call("quantize", args, on_progress=on_progress)
    except (SLMError, RuntimeError) as error:
        return [message("error", str(error)), [], "", gr.skip()]
    if result.get("rows"):
        ORIGINALS.setdefault(key, result["rows"][0])
    where = source_label(runs_dir, result["path"])
    step = f" (step {result['step']:,})" if result.get("step") is not None else ""
    text = (f"Wrote **{result['label']}** of `{name}`{step} to `{result['path']}` in {result['seconds']:.1f} s. "
            f"Chat, Compare, Evaluate and Export list it as `{where}`.")
    return [message("ok", text), report_table(accumulated_report(Path(result["path"]).parent.parent)),
            command_line(name, tag, method, size, report, args["eval_tokens"], runs_dir),
            artifacts_markdown(runs_dir, name)]


def original_key(source: Path, tag: str, eval_tokens: int) -> tuple:
    """What makes two measurements of the original the same: its checkpoint (as written now) and the windows."""
    from studio.chat_session import checkpoint_stamp

    return str(source), tag, checkpoint_stamp(Path(source), tag), int(eval_tokens)


def accumulated_report(run_dir: Path) -> list[dict]:
    """Every measured variant of a run side by side: the original (as measured last), then each quantized
    artifact's own row, read from the report.json each quantization leaves beside its artifact."""
    from studio.jobs import REPORT_FILE

    reports = []
    for folder in sorted((Path(run_dir) / "quantized").glob("*")):
        saved = read_json(folder / REPORT_FILE, default=None)
        if saved and len(saved.get("rows") or []) >= 2:
            reports.append(saved)
    if not reports:
        return []
    latest = max(reports, key=lambda r: r.get("measured_at") or 0)
    return [latest["rows"][0], *[row for r in reports for row in r["rows"][1:]]]


def report_table(rows: list[dict]) -> list[list[str]]:
    """quantization_report rows → table cells; quantized rows carry their ratio to the original row shown (a row
    saved by an earlier quantization was measured beside another measurement of the original: its stored ratios
    would disagree with the figures on screen). Sizes in format_bytes, as the report card shows them."""
    table = []
    base = rows[0] if rows else {}

    def ratio(r: dict, key: str) -> str:
        return f" ({r[key] / base[key]:.2f}×)" if base.get(key) else ""

    for i, r in enumerate(rows):
        first = i == 0
        ppl = "-" if r.get("ppl") is None else f"{r['ppl']:.3f}"
        if not first and r.get("ppl") is not None and base.get("ppl") is not None:
            ppl += f" ({r['ppl'] - base['ppl']:+.3f})"
        table.append([
            f"original ({r['model']})" if first else r["model"],
            format_bytes(r["disk_mb"] * 2**20) + ("" if first else ratio(r, "disk_mb")),
            format_bytes(r["memory_mb"] * 2**20) + ("" if first else ratio(r, "memory_mb")),
            ppl,
            f"{r['tokens_per_sec']:.1f}" + ("" if first else ratio(r, "tokens_per_sec")),
        ])
    return table


def command_line(name: str, tag: str, method: str, group_size: int, report: bool, eval_tokens: int = 20_000,
                 runs_dir: Optional[Path] = None) -> str:
    """The same work from a shell (every Studio action is reproducible with the CLI)."""
    parts = ["slm", "quantize", name, "--method", method] + (runs_dir_flag(runs_dir) if runs_dir else [])
    if method == "int4":
        parts += ["--group-size", str(group_size)]
    if tag != "best":
        parts += ["--checkpoint", tag]
    if report:
        parts += ["--report"] + (["--eval-tokens", str(eval_tokens)] if eval_tokens != 20_000 else [])
    return "From a shell: `" + " ".join(shlex.quote(p) for p in parts) + " --overwrite`"


def artifacts_markdown(runs_dir: Path, name: Optional[str]) -> str:
    """The run's quantized artifacts already on disk, with their weight-file sizes."""
    if not name:
        return ""
    folders = [p for p in run_artifacts(Path(runs_dir) / name) if p.parent.name == "quantized"]
    if not folders:
        return f"`{name}` has no quantized models yet."
    items = [f"`{p.name}` ({format_bytes((p / 'model.safetensors').stat().st_size)})" for p in folders
             if (p / "model.safetensors").exists()]
    return f"Quantized models of `{name}`: " + ", ".join(items)

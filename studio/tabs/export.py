"""Export tab: write a run, or one of its quantized versions, as a Hugging Face folder, GGUF or ONNX in the
tab's helper process; then list the files written and say how to use them."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from slm_core.errors import SLMError
from slm_core.post.gguf_quant import GGUF_TYPES as LEVELS
from slm_core.post.gguf_quant import bits_per_weight
from slm_core.system import format_bytes
from studio.allow import AllowBox
from studio.command import runs_dir_flag
from studio.desktop.browse import add_browse
from studio.jobs import JobHelper, progress_to
from studio.models import model_sources, source_label
from studio.security import check_path
from studio.tabs import QUIET, message

TITLE = "Export"
FORMATS = [("Hugging Face folder (transformers)", "hf"), ("GGUF (llama.cpp, Ollama)", "gguf"),
           ("GGUF base + LoRA adapter (a LoRA run, llama.cpp --lora)", "gguf-lora"),
           ("ONNX for onnxruntime-genai (fast chat)", "onnx"), ("ONNX graph (onnxruntime)", "onnx-graph")]
# Each level with its bits per weight and size against f16 (the embedding/output stay at a higher level).
GGUF_NOTES = {"f32": "exact", "f16": "llama.cpp's reference", "q8_0": "near-lossless", "q5_1": "", "q5_0": "",
              "q4_1": "", "q4_0": "smallest without llama.cpp", "q6_k": "needs llama.cpp",
              "q5_k_m": "needs llama.cpp", "q4_k_m": "the usual pick; needs llama.cpp"}
GGUF_TYPES = [(f"{level} — {bits_per_weight(level):.1f} bits, {bits_per_weight(level) / 16:.0%} of f16"
               + (f" ({GGUF_NOTES[level]})" if GGUF_NOTES.get(level) else ""), level) for level in LEVELS]
FILE_COLUMNS = ["file", "size", "path"]


def build(ctx) -> None:
    helper = JobHelper(ctx.runs_dir, allow_list=ctx.paths)
    with gr.Row():
        source = gr.Dropdown([], value=None, allow_custom_value=True, label="Model", scale=3, elem_id="export-model",
                             info="a run, or a quantized version of one (exported with its rounded weights)")
        add_browse(ctx, source, "folder")  # desktop app only: the system's dialog
        tag = gr.Radio(["best", "latest"], value="best", label="Checkpoint (runs)", scale=1)
    ctx.shared["export.model"] = (source, tag)  # the Runs tab's family tree opens a model here ("Export it")
    with gr.Row():
        fmt = gr.Radio(FORMATS, value="hf", label="Format", scale=3, elem_id="export-format")
        gguf_type = gr.Dropdown(GGUF_TYPES, value="f16", label="GGUF level", visible=False, scale=2,
                                info="after export: each level's size, and perplexity on the run's validation "
                                     "data against f16")
    with gr.Row():
        destination = gr.Textbox("", label="Destination folder (optional)", scale=3, elem_id="export-destination",
                                 placeholder="blank: beside the model (<run>/export/<format>)",
                                 info="the export goes into a new folder in it, named after the model and format")
        add_browse(ctx, destination, "folder")  # desktop app only: the system's dialog
    go = gr.Button("Export", variant="primary", elem_id="export-go")
    allow = AllowBox(ctx, "export-allow")
    status = gr.Markdown("", elem_id="export-message")
    files = gr.Dataframe(headers=FILE_COLUMNS, value=[], interactive=False, wrap=True, elem_id="export-files")
    usage = gr.Markdown("", elem_id="export-usage")

    def work(picked, checkpoint, kind, quant, folder="", progress=gr.Progress()):
        chosen = (folder or "").strip() or None
        check_path(ctx, chosen, "path")
        return export_run(helper, ctx.runs_dir, check_path(ctx, picked, "model"), checkpoint, kind, quant,
                          on_progress=progress_to(progress), destination=chosen)

    done = go.click(work, [source, tag, fmt, gguf_type, destination], [status, files, usage], api_name="export",
                    concurrency_limit=1, concurrency_id="export")
    allow.after(done, [("model", source), ("path", destination)])
    fmt.change(lambda f: gr.update(visible=f.startswith("gguf")), fmt, gguf_type, **QUIET)

    def choices(current: Optional[str] = None):
        sources = model_sources(ctx.runs_dir)
        paths = [path for _, path in sources]
        return gr.update(choices=sources, value=current if current in paths else (paths[0] if paths else None))

    ctx.tabs[TITLE].select(choices, source, source, **QUIET)
    ctx.on_load.append(dict(fn=choices, inputs=source, outputs=source))


def export_run(helper: JobHelper, runs_dir: Path, source: Optional[str], tag: str, fmt: str, gguf_type: str,
               on_progress: Optional[Callable[[dict], None]] = None, destination: Optional[str] = None) -> list[Any]:
    """(message, files table, how to use them) after exporting `source` in the helper; into a new folder in
    `destination` when given, else beside the model."""
    if not source:
        return [message("error", "Pick a model first (train a run in the Train tab)."), [], ""]
    if fmt not in {value for _, value in FORMATS}:
        return [message("error", "Pick a format: Hugging Face, GGUF or ONNX."), [], ""]
    args = {"source": str(source), "tag": tag, "fmt": fmt, "gguf_type": gguf_type or "f16"}
    if destination:
        args.update(destination=str(destination), name=source_label(runs_dir, source).replace("/", "-"))
    try:
        result = helper.call("export", args, on_progress=on_progress)
    except (SLMError, RuntimeError) as error:
        return [message("error", str(error)), [], ""]
    out = Path(result["dir"])
    rows = [[Path(path).relative_to(out).as_posix(), format_bytes(size), path] for path, size in result["files"]]
    total = format_bytes(sum(size for _, size in result["files"]))
    text = message("ok", f"Wrote {len(rows)} files ({total}) to `{out}` in {result['seconds']:.1f} s.")
    return [text, rows, usage_markdown(runs_dir, source, tag, result)]


def usage_markdown(runs_dir: Path, source: str, tag: str, result: dict) -> str:
    """How to run what was written, with its real paths, and the same export from a shell."""
    out, fmt = Path(result["dir"]), result["format"]
    name = _ollama_name(runs_dir, source)
    if fmt == "hf":
        lines = ["**Use it** with transformers (or pick it in Chat, Compare and Evaluate):", "```python",
                 "from transformers import AutoModelForCausalLM, AutoTokenizer",
                 f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})",
                 f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})", "```"]
    elif fmt == "gguf":
        gguf = next(Path(p) for p, _ in result["files"] if p.endswith(".gguf"))
        lines = ["**Use it** with Ollama (the Modelfile beside it carries the prompt template and stop token):",
                 "```bash", f"ollama create {name} -f {shlex.quote(str(out / 'Modelfile'))}", f"ollama run {name}",
                 "```", "or with llama.cpp:", "```bash",
                 f"llama-cli -m {shlex.quote(str(gguf))} -p 'Once upon a time' -n 64", "```"]
    elif fmt == "gguf-lora":
        base = next(Path(p) for p, _ in result["files"] if p.endswith(".gguf") and "-base-" in Path(p).name)
        adapter = next(Path(p) for p, _ in result["files"] if p.endswith(".gguf") and "-lora-" in Path(p).name)
        lines = ["**Use it** with Ollama (the Modelfile names the base and the adapter):", "```bash",
                 f"ollama create {name} -f {shlex.quote(str(out / 'Modelfile'))}", f"ollama run {name}", "```",
                 "or with llama.cpp, the adapter applied at load:", "```bash",
                 f"llama-cli -m {shlex.quote(str(base))} --lora {shlex.quote(str(adapter))} "
                 "-p 'Once upon a time' -n 64", "```"]
    elif fmt == "onnx":
        lines = ["**Use it** in Chat (it picks onnxruntime-genai for this folder), from a shell with "
                 f"`slm serve {shlex.quote(str(out))} --engine onnx`, or with onnxruntime-genai:", "```python",
                 "import onnxruntime_genai as og", f"model = og.Model({str(out)!r})", "```"]
    else:
        lines = ["**Use it** with onnxruntime: input `input_ids` int64 (batch, sequence) → `logits` "
                 "(batch, sequence, vocab); the tokenizer is `tokenizer.json` beside it.", "```python",
                 "import numpy as np, onnxruntime", "from tokenizers import Tokenizer",
                 f"session = onnxruntime.InferenceSession({str(out / 'model.onnx')!r})",
                 f"tokenizer = Tokenizer.from_file({str(out / 'tokenizer.json')!r})",
                 "ids = np.array([tokenizer.encode('Once upon a time').ids], dtype=np.int64)",
                 "logits = session.run(['logits'], {'input_ids': ids})[0]", "```"]
    lines += quality_markdown(result.get("quality"))
    command = ["slm", "export", source_label(runs_dir, source), "--format", fmt, *runs_dir_flag(runs_dir)]
    if fmt.startswith("gguf"):
        command += ["--gguf-type", result["gguf_type"]]
    if tag != "best":
        command += ["--checkpoint", tag]
    # A chosen destination; or an artifact's export, which `slm export` would put beside it
    if result.get("chosen_dir") or not (Path(source) / "status.json").exists():
        command += ["--out", str(out)]
    lines.append("From a shell: `" + " ".join(shlex.quote(p) for p in command) + " --overwrite`")
    return "\n".join(lines)


def quality_markdown(quality: Optional[dict]) -> list[str]:
    """The size/quality table of a GGUF export: every level's size, perplexity for f16 and the level written."""
    if not quality:
        return []
    if "error" in quality:
        return ["", f"Perplexity per level not measured: {quality['error']}"]
    lines = ["", "**Size and quality by level** (perplexity on the run's validation data; the rest are estimates):",
             "", "| level | size | perplexity | vs f16 |", "|---|---|---|---|"]
    for row in quality["rows"]:
        ppl = "" if row["perplexity"] is None else f"{row['perplexity']:.3f}"
        delta = "" if row["vs_f16"] is None else f"{row['vs_f16']:+.2%}"
        lines.append(f"| {row['level']} | {format_bytes(row['bytes'])} | {ppl} | {delta} |")
    return lines


def _ollama_name(runs_dir: Path, source: str) -> str:
    """An Ollama model name from the source's label: lowercase letters, digits and dashes."""
    label = source_label(runs_dir, source).lower()
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label).strip("-") or "my-model"

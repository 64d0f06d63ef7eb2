"""Data tab: where the text comes from (built-in, a file or folder, a table with a column picker, a Hub
dataset), its preview and its tokenizing, run in the helper process."""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from slm_core.config import DataConfig, RunConfig, TokenizerConfig
from slm_core.errors import SLMError
from slm_core.system import format_count
from studio.allow import AllowBox
from studio.desktop.browse import add_browse
from studio.plots import length_figure
from studio.security import check_fields, check_path
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Data"
KINDS = ["Built-in stories", "Built-in instructions", "Local file or folder", "Upload", "Hugging Face Hub",
         "Built-in preference pairs", "Built-in arithmetic"]  # the last two: DPO/ORPO pairs, GRPO's problems
BUILTINS = {KINDS[0]: "builtin", KINDS[1]: "builtin:instructions", KINDS[5]: "builtin:preferences",
            KINDS[6]: "builtin:arithmetic"}
UPLOAD_TYPES = [".txt", ".md", ".jsonl", ".json", ".csv", ".tsv", ".parquet"]
TOKENIZERS = [("GPT-2 BPE (50,257 tokens)", "gpt2"), ("Train a BPE on this data", "bpe"), ("Characters", "char")]
TEMPLATES = [("auto (from the records)", ""), ("alpaca", "alpaca"), ("chatml", "chatml")]
SPLITS = [("paragraph (blank lines)", "paragraph"), ("line", "line"), ("whole file", "whole")]
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENS_PENDING = '<span class="slm-muted">Token counts appear after tokenizing.</span>'


def kind_of(source: str, uploads: Optional[Path] = None) -> Optional[str]:
    """The Source choice a source value belongs to; None for a blank one (just after picking "Upload" or
    "Local file", before a file is given: the choice stays as picked)."""
    source = (source or "").strip()
    if not source:
        return None
    if uploads is not None and Path(source).expanduser().resolve().is_relative_to(Path(uploads).resolve()):
        return KINDS[3]
    if source in ("builtin", "builtin:stories"):
        return KINDS[0]
    if source == "builtin:instructions":
        return KINDS[1]
    if source in ("builtin:preferences", "builtin:arithmetic"):
        return KINDS[5] if source == "builtin:preferences" else KINDS[6]
    if HUB_NAME.match(source) and not Path(source).expanduser().exists():
        return KINDS[4]
    return KINDS[2]


def build(ctx) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            kind = gr.Radio(KINDS, value=KINDS[0], label="Source", elem_id="data-kind")
            source = gr.Textbox("builtin", label="Source (what the run reads)",
                                info="'builtin', 'builtin:instructions', 'builtin:preferences', "
                                     "'builtin:arithmetic', a file or folder path, or a Hub name "
                                     "like roneneldan/TinyStories")
            add_browse(ctx, source, "file")  # desktop app only: the system's dialog
            upload = gr.File(label="Upload files", file_count="multiple", file_types=UPLOAD_TYPES, visible=False,
                             elem_id="data-upload")
            with gr.Row():  # two a row: four in one clipped the dropdowns' values ("auto (from the recor")
                column = gr.Dropdown([("auto", "")], value="", label="Text column (JSONL/CSV/Parquet)",
                                     allow_custom_value=True, info="blank: 'text', else the first string column")
                template = gr.Dropdown(TEMPLATES, value="", label="Instruction template",
                                       info="for instruction records (instruction/output or messages)")
            with gr.Row():
                max_chars = gr.Number(0, label="Use at most N characters", precision=0, minimum=0,
                                      info="0 = all of it")
                split = gr.Dropdown(SPLITS, value="paragraph", label="Text files: one document per",
                                    allow_custom_value=True, info="or type a separator, e.g. \\n---\\n")
            preview_btn = gr.Button("Preview", variant="secondary")
            allow = AllowBox(ctx, "data-allow")
        with gr.Column(scale=2):
            tok_kind = gr.Radio(TOKENIZERS, value="bpe", label="Tokenizer")
            tok_size = gr.Number(4096, label="BPE vocabulary size", precision=0, minimum=256, maximum=65536)
            tok_path = gr.Textbox("", label="GPT-2 vocabulary folder (offline copy)", visible=False,
                                  info="holds vocab.bpe + encoder.json; blank downloads them once")
            tok_browse = add_browse(ctx, tok_path, "folder")
            tokenize_btn = gr.Button("Tokenize now (cached for every run)", variant="primary")
            tokens = gr.Markdown(TOKENS_PENDING, elem_id="data-tokens")
            lengths = gr.Plot(visible=False, elem_id="data-lengths", show_label=False)
    summary = gr.Markdown("", elem_id="data-summary")
    records = gr.HTML("", elem_id="data-preview")
    ctx.fields.update({"data.source": source, "data.text_column": column, "data.template": template,
                       "data.max_chars": max_chars, "data.split": split, "tokenizer.kind": tok_kind, "tokenizer.vocab_size": tok_size,
                       "tokenizer.path": tok_path})
    _wire(ctx, kind, source, upload, column, template, max_chars, split, preview_btn, summary, records)
    _wire_tokenizer(ctx, tok_kind, tok_size, tok_path, tokenize_btn, [tokens, lengths])
    tok_kind.change(lambda k: gr.update(visible=k == "gpt2"), tok_kind, tok_browse, **QUIET)  # with its box
    # What was measured of one source (or with one tokenizer) goes when another is given: a preview and token
    # counts of the last upload must not stand beside a Hub name that failed.
    source.change(lambda: ("", "", *stale_tokens()), None, [summary, records, tokens, lengths], **QUIET)
    gr.on([c.change for c in (column, template, max_chars, split, tok_kind, tok_size, tok_path)], stale_tokens,
          None, [tokens, lengths], **QUIET)
    allow.after(ctx.shared["data.preview_event"], [("data", source)])
    allow.after(ctx.shared["data.tokenize_event"], [("data", source), ("path", tok_path)])


def _wire(ctx, kind, source, upload, column, template, max_chars, split, preview_btn, summary, records) -> None:
    def on_kind(choice: str, current: str):
        value = BUILTINS.get(choice)
        if value is None and current.startswith("builtin"):
            value = ""
        return gr.update(value=value) if value is not None else gr.update(), gr.update(visible=choice == KINDS[3])

    kind.input(on_kind, [kind, source], [source, upload], **QUIET)
    def on_source(value: str):
        choice = kind_of(value, ctx.runs_dir / "uploads")
        if choice in (None, KINDS[2]):  # blank, or a path typed in whichever mode: leave the choice as it is
            return gr.skip(), gr.skip()
        return gr.update(value=choice), gr.update(visible=choice == KINDS[3])

    source.change(on_source, source, [kind, upload], **QUIET)
    upload.upload(lambda files: save_uploads(files, ctx.runs_dir), upload, source, **PRIVATE)
    ctx.shared["data.preview_event"] = preview_btn.click(
        lambda src, *a: preview(ctx.helper, check_path(ctx, src, "data"), *a), [source, column, template, max_chars, split],
        [summary, records, column], api_name="data_preview")


def _wire_tokenizer(ctx, tok_kind, tok_size, tok_path, tokenize_btn, tokens) -> None:
    tok_kind.change(lambda k: (gr.update(visible=k == "bpe"), gr.update(visible=k == "gpt2")), tok_kind,
                    [tok_size, tok_path], **QUIET)
    keys = list(ctx.fields)

    def on_tokenize(*values, progress=gr.Progress(track_tqdm=True)):
        return tokenize(ctx.helper, check_fields(ctx, dict(zip(keys, values))), progress)

    ctx.shared["data.tokenize_event"] = tokenize_btn.click(on_tokenize, list(ctx.fields.values()), tokens,
                                                          api_name="data_tokenize")


def stale_tokens() -> tuple:
    """The token panel once its counts no longer describe the source and tokenizer on the page."""
    return TOKENS_PENDING, gr.update(visible=False)


def save_uploads(files: Optional[list], runs_dir: Path) -> Any:
    """Copy uploaded files out of Gradio's temporary folder to <runs dir>/uploads/, so the path in the
    run's config (and in the shell command) stays valid."""
    if not files:
        return gr.update()
    paths = [Path(getattr(f, "name", f)) for f in files]
    target = runs_dir / "uploads"
    if len(paths) > 1:
        target = target / time.strftime("upload-%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy2(path, target / path.name)
    return str(target if len(paths) > 1 else target / paths[0].name)


def data_config(source: str, column: str = "", template: str = "", max_chars: Any = None,
                split: str = "paragraph") -> DataConfig:
    return DataConfig(source=(source or "").strip(), text_column=column or None, template=template or None,
                      max_chars=int(max_chars) if max_chars else None, split=split or "paragraph")


def preview(helper, source: str, column: str, template: str, max_chars: Any, split: str = "paragraph"):
    """Summary line, the first records, and the column choices for tabular sources."""
    try:
        cfg = data_config(source, column, template, max_chars, split)
        answer = helper.call("preview", {"data": dataclasses.asdict(cfg), "n": 5})
    except SLMError as error:
        return message("error", str(error)), "", gr.update()
    info, texts = answer["summary"], answer["texts"]
    kind = "instruction records" + (f" ({info['template']} template)" if info.get("template") else "") \
        if info.get("is_instruction") else "preference pairs" if info.get("is_pairs") else "documents"
    at_least = "" if info.get("complete", True) else "at least "  # counting stops after a while on huge corpora
    text = (f"**{at_least}{info['n_documents']:,} {kind}**, {format_count(info['n_chars'])} characters "
            f"(kind: {info['kind']}).")
    columns = info.get("columns") or []
    choices = [("auto", "")] + [(c, c) for c in columns]
    cards = "".join(f"<pre class='slm-record'>{html.escape(t)}</pre>" for t in texts)
    return text, f"<div class='slm-records'>{cards}</div>", gr.update(choices=choices)


def tokenize(helper, values: dict[str, Any], progress: Any = None) -> tuple:
    """prepare_data for the page's source and tokenizer (in the helper process): trains the BPE if asked,
    writes the token cache the runs will find."""
    def report(p: dict) -> None:
        if progress is not None:
            progress((p["n"], p["total"]) if p.get("total") else None, desc=p.get("desc") or "tokenizing")

    try:
        config = RunConfig(data=data_config(values.get("data.source"), values.get("data.text_column"),
                                            values.get("data.template"), values.get("data.max_chars"),
                                            values.get("data.split")),
                           tokenizer=TokenizerConfig(kind=values.get("tokenizer.kind") or "bpe",
                                                     vocab_size=int(values.get("tokenizer.vocab_size") or 4096),
                                                     path=values.get("tokenizer.path") or None))
        report({"n": 0, "total": None, "desc": "reading the source"})
        data = helper.call("tokenize", {"config": config.to_dict()}, on_progress=report)
    except SLMError as error:
        return message("error", str(error)), gr.update(visible=False)
    return message("ok", f"**{format_count(data['train_tokens'])} train + {format_count(data['val_tokens'])} "
                         f"validation tokens** ({data['n_vocab']:,}-token {data['kind']} vocabulary, "
                         f"{format_count(data['n_chars'])} characters) in {data['seconds']:.1f} s — cached in "
                         f"`{data['cache_dir']}`; runs on this data start without tokenizing again.\n\n"
                         + corpus_stats(data)), gr.update(value=length_figure(data), visible=True)


def corpus_stats(data: dict) -> str:
    """Corpus size, documents, tokens and tokens per document, as one Markdown line."""
    tokens, docs = data["train_tokens"] + data["val_tokens"], data.get("n_documents") or 0
    size = (f"{data['bytes'] / 2 ** 20:,.1f} MB" if (data.get("bytes") or 0) >= 2 ** 20 else
            f"{data['bytes'] / 1024:,.1f} kB" if data.get("bytes") else f"{format_count(data['n_chars'])} characters")
    per_doc = f"{tokens / docs:,.0f}" if docs else "-"
    return (f"Corpus **{size}** · **{docs:,} documents** ({data.get('train_documents') or 0:,} train, "
            f"{data.get('val_documents') or 0:,} validation) · **{format_count(tokens)} tokens** · "
            f"**{per_doc} tokens per document**")

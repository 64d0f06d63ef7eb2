"""The Evaluate tab's report-card panel: benchmark tasks (lm-evaluation-harness), an LLM judge
reached through any OpenAI-compatible endpoint, and one report card per picked model, side by side,
downloadable as Markdown and JSON. The work is `slm_core.post.report_card` in the tab's job process.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio.command import runs_dir_flag
from studio.desktop.browse import JSONL, add_browse
from studio.jobs import JobHelper, progress_to
from studio.models import source_label
from studio.security import check_judge_url, check_path, page_error
from studio.tabs import message

SHIPPED = ["story_ending", "opposites", "arithmetic"]  # slm_core.post.tasks.SHIPPED_TASKS (no torch import here)


def build(ctx: Any, models: Any, tag: Any) -> None:
    """Lays the panel out under the tab's perplexity table; `models` and `tag` are the tab's pickers."""
    helper = JobHelper(ctx.runs_dir, allow_list=ctx.paths)
    gr.Markdown("### Report card: tasks and judge")
    with gr.Row():
        shipped = gr.CheckboxGroup(SHIPPED, value=SHIPPED, label="Shipped tasks (offline)", scale=2,
                                   elem_id="report-tasks")
        extra = gr.Textbox("", label="More tasks", scale=2, placeholder="my_task.jsonl, hellaswag",
                           info="JSONL files (question/choices/answer or prompt/reference) or lm-eval task names")
        add_browse(ctx, extra, "file", JSONL, join=", ")  # desktop app only: adds a task file to the list
        limit = gr.Number(50, precision=0, minimum=0, label="Items per task", scale=1, info="0: all of them")
    with gr.Accordion("LLM judge (optional)", open=False):
        with gr.Row():
            url = gr.Textbox("", label="Judge endpoint", elem_id="report-judge-url",
                             placeholder="http://127.0.0.1:8000/v1", info="slm serve, Ollama, vLLM, llama.cpp, a hosted API")
            judge_model = gr.Textbox("", label="Judge model", info="blank: the first model it lists")
            key = gr.Textbox("", label="API key", type="password", info="blank for local servers")
        with gr.Row():
            prompts = gr.Textbox("", label="Prompts (JSONL)", info="blank: held-out built-in instructions")
            add_browse(ctx, prompts, "file", JSONL)
            judge_limit = gr.Number(10, precision=0, minimum=1, label="Prompts to judge")
            seed = gr.Number(0, precision=0, label="Seed")
    go = gr.Button("Make report cards", variant="primary", elem_id="report-go")
    status = gr.Markdown("", elem_id="report-message")
    report = gr.Markdown("", elem_id="report-card")
    files = gr.File(label="Report files", file_count="multiple", interactive=False, elem_id="report-files")
    command = gr.Markdown("", elem_classes="slm-note")

    def work(picked, checkpoint, ticked, more, n, judge_url, name, api_key, prompt_file, judged, judge_seed,
             progress=gr.Progress()):
        check_path(ctx, picked, "model")
        check_path(ctx, prompt_file or None, "path")
        tasks = list(ticked or []) + [t.strip() for t in (more or "").split(",") if t.strip()]
        for task in tasks:  # whatever its name, a task the engine would open as a file is checked as one
            if task not in SHIPPED and (task.endswith((".jsonl", ".json")) or os.sep in task
                                        or Path(task).expanduser().exists()):
                check_path(ctx, task, "path")
        if (judge_url or "").strip():
            page_error(check_judge_url, judge_url, ctx.judge_urls)
        judge = {"url": (judge_url or "").strip(), "model": (name or "").strip(), "key": api_key or None,
                 "prompts": (prompt_file or "").strip() or None, "limit": int(judged or 10),
                 "seed": int(judge_seed or 0)}
        return make_cards(helper, ctx.runs_dir, picked, checkpoint, tasks, int(n) if n else None, judge,
                          on_progress=progress_to(progress))

    go.click(work, [models, tag, shipped, extra, limit, url, judge_model, key, prompts, judge_limit, seed],
             [status, report, files, command], api_name="report_cards", concurrency_limit=1,
             concurrency_id="evaluate")


def make_cards(helper: JobHelper, runs_dir: Path, sources: Optional[list], tag: str, tasks: list[str],
               limit: Optional[int], judge: dict, on_progress: Optional[Callable[[dict], None]] = None) -> list:
    """(message, report Markdown, file paths, equivalent command) for the picked models."""
    if not sources:
        return [message("error", "Pick one or more models above first."), "", None, ""]
    if not tasks and not judge.get("url"):
        return [message("error", "Tick a task or give a judge endpoint: a report card needs something to measure."),
                "", None, ""]
    try:
        result = helper.call("report_cards", {"sources": [str(s) for s in sources], "tag": tag, "tasks": tasks,
                                              "limit": limit, "judge": judge if judge.get("url") else None},
                             on_progress=on_progress)
    except (SLMError, RuntimeError) as error:
        return [message("error", str(error)), "", None, ""]
    paths = [p for card in result["cards"] for p in (card["files"]["markdown"], card["files"]["json"])]
    if result["errors"]:
        text = message("error", " ".join(f"`{source_label(runs_dir, e['source'])}`: {e['error']}"
                                         for e in result["errors"]))
    else:
        text = message("ok", f"{len(result['cards'])} report card{'s' if len(result['cards']) > 1 else ''} saved "
                             "beside the models (evals/); higher task and judge scores are better.")
    return [text, _relabel(result["markdown"], runs_dir, result["cards"]), paths or None,
            command_line(runs_dir, sources, tag, tasks, limit, judge)]


def _relabel(markdown: str, runs_dir: Path, cards: list[dict]) -> str:
    """Absolute model paths in the tables → the short labels the pickers show."""
    for card in cards:
        markdown = markdown.replace(f"| {card['model']} |", f"| {source_label(runs_dir, card['model'])} |")
    return markdown


def command_line(runs_dir: Path, sources: list, tag: str, tasks: list[str], limit: Optional[int], judge: dict) -> str:
    parts = ["slm", "eval", *[source_label(runs_dir, s) for s in sources], *runs_dir_flag(runs_dir)]
    if tasks:
        parts += ["--tasks", ",".join(tasks)]
    if limit:
        parts += ["--limit", str(limit)]
    if judge.get("url"):
        parts += ["--judge", judge["url"], "--judge-limit", str(judge["limit"]), "--judge-seeds", str(judge["seed"])]
        for flag, key in (("--judge-model", "model"), ("--judge-prompts", "prompts")):
            if judge.get(key):
                parts += [flag, judge[key]]
        if judge.get("key"):
            parts += ["--judge-key", "$OPENAI_API_KEY"]
    if tag != "best":
        parts += ["--checkpoint", tag]
    if not tasks and not judge.get("url"):
        parts.append("--card")
    return "From a shell: `" + " ".join(shlex.quote(p) if not p.startswith("$") else p for p in parts) + "`"

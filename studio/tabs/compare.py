"""Compare tab: one prompt, two models, both answers streaming side by side with their speed; "base vs base +
adapter" fills both pickers from a LoRA (or DPO, ORPO, GRPO) run: before vs after."""

from __future__ import annotations

import threading
from typing import Any, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio.allow import AllowBox
from studio.chat_session import StopFlags
from studio.compare_session import PairSession, lora_base, lora_runs
from studio.desktop.browse import add_browse
from studio.model_picker import chat_choices  # runs, their artifacts, cached Hub models
from studio.security import check_path
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Compare"


def build(ctx) -> None:
    pair = PairSession(ctx.runs_dir, allow_list=ctx.paths)
    stops = StopFlags()  # one per browser session: Stop ends this tab's pair of replies, not every tab's
    pickers, bots, infos = [], [], []
    with gr.Row(equal_height=False):
        for side in "AB":
            with gr.Column():
                pickers.append(gr.Dropdown([], value=None, allow_custom_value=True, label=f"Model {side}",
                                           elem_id=f"compare-model-{side.lower()}"))
                add_browse(ctx, pickers[-1], "folder")  # desktop app only: the system's dialog
                bots.append(gr.Chatbot(label=f"Model {side}", show_label=False, height=400, buttons=["copy"],
                                       elem_id=f"compare-bot-{side.lower()}"))
                infos.append(gr.Markdown("", elem_id=f"compare-info-{side.lower()}"))
    with gr.Row():
        text = gr.Textbox(placeholder="One prompt for both models; press Enter", show_label=False, scale=5,
                          elem_id="compare-input", lines=1)
        send = gr.Button("Send to both", variant="primary", scale=1, min_width=120, elem_id="compare-send")
        stop = gr.Button("Stop", scale=0, min_width=80)
        clear = gr.Button("Clear", scale=0, min_width=80)
    system = gr.Textbox("", label="System prompt (both sides)", lines=1, max_lines=4, elem_id="compare-system",
                        placeholder="used by models with a chat template; ignored (and said so) by base models")
    with gr.Row(equal_height=True):
        lora = gr.Dropdown([], value=None, label="LoRA, DPO, ORPO or GRPO run", scale=3, elem_id="compare-lora",
                           info="A: the base it was trained from (with adapters: the adapter off) · B: the run")
        lora_go = gr.Button("Base vs base + adapter (before vs after)", scale=1, elem_id="compare-lora-go")
    allow = AllowBox(ctx, "compare-allow")
    with gr.Accordion("Sampling (the same for both; a fixed seed makes the comparison fair)", open=True):
        with gr.Row():
            settings = _sampling()
    inputs = [text, *bots, *pickers, *settings, system]
    outputs = [*bots, text, *infos]

    def respond(request: gr.Request, prompt, history_a, history_b, source_a, source_b, *values):
        check_path(ctx, [source_a, source_b], "model")
        *sampling, system_prompt = values  # the sliders, then the system prompt
        yield from compare_reply(pair, stops.get(request.session_hash), prompt, history_a, history_b, source_a, source_b, *sampling,
                                 system=system_prompt)

    sent = send.click(respond, inputs, outputs, api_name="compare", concurrency_limit=4, concurrency_id="compare",
                      show_progress="hidden")  # several browser tabs at once: the engines batch them
    submitted = text.submit(respond, inputs, outputs, concurrency_limit=4, concurrency_id="compare", **QUIET)
    for event in (sent, submitted):
        allow.after(event, [("model", pickers[0]), ("model", pickers[1])])

    def stop_replies(request: gr.Request) -> None:
        stops.get(request.session_hash).set()

    # Undocumented, not private: a client (and the test of this) can stop its own session's replies.
    stop.click(stop_replies, None, None, api_name="compare_stop", api_visibility="undocumented")
    clear.click(lambda: ([], [], "", ""), None, [*bots, *infos], **QUIET)
    # One click: the pickers become (base, LoRA run), the histories restart, and the prompt goes to both.
    picked = lora_go.click(lambda run: base_and_adapter(ctx.runs_dir, check_path(ctx, run, "model")), lora,
                           [*pickers, *bots, *infos], **PRIVATE)
    picked.success(respond, inputs, outputs, concurrency_limit=4, concurrency_id="compare", **QUIET)
    ctx.tabs[TITLE].select(lambda: gr.update(choices=lora_runs(ctx.runs_dir)), None, lora, **QUIET)

    def choices(a: Optional[str] = None, b: Optional[str] = None):
        sources = chat_choices(ctx.runs_dir)
        paths = [path for _, path in sources]
        first = a if a in paths else (paths[0] if paths else None)
        second = b if b in paths else (paths[1] if len(paths) > 1 else first)  # e.g. a run and its int8
        return gr.update(choices=sources, value=first), gr.update(choices=sources, value=second)

    ctx.tabs[TITLE].select(choices, pickers, pickers, **QUIET)
    ctx.on_load.append(dict(fn=choices, inputs=pickers, outputs=pickers))


def _sampling() -> list[Any]:
    return [
        gr.Slider(0, 2, 0.8, step=0.05, label="Temperature", info="0 = greedy", min_width=140),
        gr.Slider(0, 200, 50, step=1, label="Top-k", info="0 = off", min_width=140),
        gr.Slider(0.05, 1, 1.0, step=0.05, label="Top-p", min_width=140),
        gr.Slider(1, 2, 1.1, step=0.05, label="Repetition penalty", min_width=140),
        gr.Slider(1, 1024, 120, step=1, label="Max new tokens", min_width=140),
        gr.Textbox("0", label="Seed", placeholder="blank: random", min_width=100),
    ]


def base_and_adapter(runs_dir, run: Optional[str]):
    """(picker A, picker B, history A, history B, info A, info B) for "base vs base + adapter" of a LoRA run.
    A refusal (not a LoRA run) is raised, so the chained reply does not start."""
    from pathlib import Path

    path = Path(run or "")
    if not path.is_absolute():
        path = Path(runs_dir) / path
    base = lora_base(path) if run else None
    if base is None:
        raise gr.Error("Pick a LoRA run (or a DPO, ORPO or GRPO run): its base (train.init_from) goes on the left, "
                       "the run on the right.", print_exception=False)
    # Replaced by the replies' progress once a prompt is sent (now, when the box holds one).
    before, after = "_before: the model it started from_", "_after: the run (with its adapter, if it has one)_"
    return gr.update(value=base), gr.update(value=str(path)), [], [], before, after


def sampling_settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed) -> dict:
    text = str(seed or "").strip()
    return dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
                seed=int(text) if text.lstrip("-").isdigit() else None)


def speed_line(stats: dict, stopped: bool = False) -> str:
    from studio.tabs.chat import speed_text

    return speed_text(stats, "stopped" if stopped else ("done" if stats.get("done") else "generating…"))


def compare_reply(pair: PairSession, stop_flag: threading.Event, text: str, history_a: list, history_b: list,
                  source_a: Optional[str], source_b: Optional[str], *sampling, system: str = ""):
    """Stream both answers: yields (history A, history B, textbox, info A, info B). `system`: the system prompt
    both sides render in their own chat template."""
    pasts = (list(history_a or []), list(history_b or []))
    if not (text or "").strip():
        yield pasts[0], pasts[1], text, gr.skip(), gr.skip()
        return
    if not source_a or not source_b:
        error = message("error", "Pick a model on each side first.")
        yield pasts[0], pasts[1], text, error, error
        return
    stop_flag.clear()
    histories = [past + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}] for past in pasts]
    yield histories[0], histories[1], "", "_loading and generating…_", "_loading and generating…_"
    stats: tuple[dict, dict] = ({}, {})
    try:
        for side, delta in pair.stream(text, pasts, (source_a, source_b), sampling_settings(*sampling), stats,
                                       should_stop=stop_flag.is_set, system=system):
            histories[side][-1]["content"] += delta
            yield histories[0], histories[1], "", speed_line(stats[0]), speed_line(stats[1])
    except SLMError as error:
        error_text = message("error", str(error))
        yield pasts[0], pasts[1], text, error_text, error_text
        return
    stopped = stop_flag.is_set()
    from studio.tabs.chat import system_note

    infos = [f"{speed_line(stats[i], stopped)}\n\n{pair.describe(i)}{system_note(stats[i])}" for i in (0, 1)]
    yield histories[0], histories[1], "", infos[0], infos[1]

"""Compare tab: one prompt, two models, both answers streaming side by side with their tokens/s: an
original against its int8 version, a base model against its LoRA fine-tune, two runs.

Models come from studio.models.model_sources (runs and their quantized / exported versions) and are
held by studio.compare_session.PairSession (two chat sessions, stepped in turn). Each side keeps its
own conversation, so tuned models see the earlier turns in their own template.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio.allow import AllowBox
from studio.compare_session import PairSession
from studio.models import model_sources
from studio.security import check_path
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Compare"


def build(ctx) -> None:
    pair = PairSession(ctx.runs_dir)
    stop_flag = threading.Event()
    pickers, bots, infos = [], [], []
    with gr.Row(equal_height=False):
        for side in "AB":
            with gr.Column():
                pickers.append(gr.Dropdown([], value=None, allow_custom_value=True, label=f"Model {side}",
                                           elem_id=f"compare-model-{side.lower()}"))
                bots.append(gr.Chatbot(label=f"Model {side}", show_label=False, height=400, buttons=["copy"],
                                       elem_id=f"compare-bot-{side.lower()}"))
                infos.append(gr.Markdown("", elem_id=f"compare-info-{side.lower()}"))
    with gr.Row():
        text = gr.Textbox(placeholder="One prompt for both models; press Enter", show_label=False, scale=5,
                          elem_id="compare-input", lines=1)
        send = gr.Button("Send to both", variant="primary", scale=1, min_width=120, elem_id="compare-send")
        stop = gr.Button("Stop", scale=0, min_width=80)
        clear = gr.Button("Clear", scale=0, min_width=80)
    allow = AllowBox(ctx, "compare-allow")
    with gr.Accordion("Sampling (the same for both; a fixed seed makes the comparison fair)", open=True):
        with gr.Row():
            settings = _sampling()
    inputs = [text, *bots, *pickers, *settings]
    outputs = [*bots, text, *infos]

    def respond(prompt, history_a, history_b, source_a, source_b, *values):
        check_path(ctx, [source_a, source_b], "model")
        yield from compare_reply(pair, stop_flag, prompt, history_a, history_b, source_a, source_b, *values)

    sent = send.click(respond, inputs, outputs, api_name="compare", concurrency_limit=4, concurrency_id="compare",
                      show_progress="hidden")  # several browser tabs at once: the engines batch them
    submitted = text.submit(respond, inputs, outputs, concurrency_limit=4, concurrency_id="compare", **QUIET)
    for event in (sent, submitted):
        allow.after(event, [("model", pickers[0]), ("model", pickers[1])])
    stop.click(lambda: stop_flag.set(), None, None, **PRIVATE)
    clear.click(lambda: ([], [], "", ""), None, [*bots, *infos], **QUIET)

    def choices(a: Optional[str] = None, b: Optional[str] = None):
        sources = model_sources(ctx.runs_dir)
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


def sampling_settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed) -> dict:
    text = str(seed or "").strip()
    return dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
                seed=int(text) if text.lstrip("-").isdigit() else None)


def speed_line(stats: dict, stopped: bool = False) -> str:
    from studio.tabs.chat import speed_text

    return speed_text(stats, "stopped" if stopped else ("done" if stats.get("done") else "generating…"))


def compare_reply(pair: PairSession, stop_flag: threading.Event, text: str, history_a: list, history_b: list,
                  source_a: Optional[str], source_b: Optional[str], *sampling):
    """Stream both answers: yields (history A, history B, textbox, info A, info B)."""
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
                                       should_stop=stop_flag.is_set):
            histories[side][-1]["content"] += delta
            yield histories[0], histories[1], "", speed_line(stats[0]), speed_line(stats[1])
    except SLMError as error:
        error_text = message("error", str(error))
        yield pasts[0], pasts[1], text, error_text, error_text
        return
    stopped = stop_flag.is_set()
    infos = [f"{speed_line(stats[i], stopped)}\n\n{pair.describe(i)}" for i in (0, 1)]
    yield histories[0], histories[1], "", infos[0], infos[1]

"""Serve tab: the picked model behind the OpenAI-compatible API (`slm serve`) as a managed background process,
with its URL, a ready-to-paste `openai` snippet and curl line, live request count and tokens/s, and a Stop. The
server outlives the page: a reloaded page finds it again (studio.served)."""

from __future__ import annotations

from typing import Any, Iterator, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio.desktop.browse import GGUF, add_browse
from studio.model_picker import chat_choices  # runs, their artifacts, cached Hub models
from studio.security import check_path
from studio.served import DEFAULT_PORT, ENGINES, ServeManager, public_url, snippets
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Serve"
REFRESH_S = 2.0  # the live figures: one /metrics read per page per tick


def build(ctx) -> None:
    manager = ServeManager(ctx.runs_dir, allow_list=ctx.paths)
    gr.Markdown("Serve a model to other tools over the OpenAI-compatible API (`slm serve`). The server runs in the "
                "background and keeps running when this page is closed; it is listed in the Runs tab.",
                elem_classes="slm-note")
    with gr.Row(equal_height=True):
        model = gr.Dropdown([], value=None, allow_custom_value=True, label="Model", scale=3, elem_id="serve-model")
        add_browse(ctx, model, "folder")  # desktop app only: the system's dialogs
        add_browse(ctx, model, "file", GGUF, label="GGUF…")
        port = gr.Number(DEFAULT_PORT, precision=0, label="Port", scale=1, min_width=100, elem_id="serve-port")
        engine = gr.Dropdown(list(ENGINES), value="auto", label="Engine", scale=1, min_width=120,
                             info="auto: the faster here, measured once")
    with gr.Row(equal_height=True):
        host = gr.Textbox("127.0.0.1", label="Host", scale=1, elem_id="serve-host",
                          info="127.0.0.1: this machine only; any other address needs an API key")
        key = gr.Textbox("", label="API key (optional)", type="password", scale=2, elem_id="serve-key",
                         info="clients send 'Authorization: Bearer KEY'; never written to disk")
    with gr.Row():
        start = gr.Button("Serve this model", variant="primary", scale=0, min_width=180, elem_id="serve-start")
        stop = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id="serve-stop")
    status = gr.Markdown("", elem_id="serve-status")
    figures = gr.Markdown("", elem_id="serve-figures")
    python = gr.Code("", language="python", label="Python (the official openai client)", interactive=False,
                     elem_id="serve-python")
    curl = gr.Code("", language="shell", label="curl", interactive=False, elem_id="serve-curl")
    shown = gr.State(None)  # the port of the server this page shows
    outputs = [status, python, curl, figures, shown]

    def serve(model_value, port_value, host_value, key_value, engine_value):
        check_path(ctx, model_value, "model")
        yield from serve_model(manager, model_value, port_value, host_value, key_value, engine_value)

    start.click(serve, [model, port, host, key, engine], outputs, concurrency_limit=1, concurrency_id="serve",
                **PRIVATE)
    stop.click(lambda current: stop_server(manager, current), shown, outputs, **PRIVATE)
    timer = gr.Timer(REFRESH_S)
    timer.tick(lambda current: live_figures(manager, current), shown, [figures, shown], concurrency_limit=None,
               **QUIET)

    def choices(current: Optional[str] = None):
        sources = chat_choices(ctx.runs_dir)
        paths = [path for _, path in sources]
        return gr.update(choices=sources, value=current if current in paths else (paths[0] if paths else None))

    ctx.tabs[TITLE].select(choices, model, model, **QUIET)
    ctx.on_load.append(dict(fn=choices, inputs=model, outputs=model))
    ctx.on_load.append(dict(fn=lambda: restore(manager), inputs=None, outputs=outputs))


def _shown(state: dict, api_key: Optional[str] = None, note: str = "") -> list[Any]:
    python, curl = snippets(state, api_key)
    engine = state.get("engine_line") or state.get("engine") or "?"
    key = "an API key" if state.get("api_key_set") else "no API key"
    text = message("ok", f"Serving **{state['model_id']}** at **{public_url(state)}** ({key}; pid {state['pid']}). "
                         f"Engine: {engine}.") + (f"\n\n{note}" if note else "")
    return [text, python, curl, "", state["port"]]


def serve_model(manager: ServeManager, model: Optional[str], port, host: str, api_key: Optional[str],
                engine: str = "auto") -> Iterator[list[Any]]:
    """Start the server and wait until it answers: yields [status, python, curl, figures, shown port]."""
    try:
        state = manager.start(model, port, host, api_key, engine)
        yield [message("info", f"Starting the server on port {state['port']} (loading the model"
                               + (", measuring the engines once" if engine == "auto" else "") + ")…"),
               "", "", "", state["port"]]
        state = manager.wait_ready(state)
    except SLMError as error:
        yield [message("error", str(error)), "", "", "", None]
        return
    yield _shown(state, (api_key or "").strip() or None)


def restore(manager: ServeManager) -> list[Any]:
    """A page that opens (or reloads) shows the newest server still running."""
    live = manager.live()
    if not live:
        return ["", "", "", "", None]
    others = [str(s["port"]) for s in live[1:]]
    return _shown(live[0], note=f"Also serving on port(s) {', '.join(others)} (Runs tab)." if others else "")


def stop_server(manager: ServeManager, port) -> list[Any]:
    if port is None:
        return [message("info", "No server to stop."), "", "", "", None]
    try:
        state = manager.stop(port)
    except SLMError as error:
        return [message("error", str(error)), "", "", "", None]
    return [message("ok", f"Stopped the server on port {state['port']}."), "", "", "", None]


def live_figures(manager: ServeManager, port) -> tuple[Any, Any]:
    """[figures, shown port]: requests answered, tokens generated and tokens/s since the last reading."""
    if port is None:
        return gr.skip(), gr.skip()
    state = manager.find(port)
    if state is None:
        return message("warn", f"The server on port {port} is no longer running (its log: Runs tab, "
                               f"serve-{port})."), None
    figures = manager.metrics(state)
    if figures is None:
        return "_waiting for the server…_", port
    return (f"**{figures['requests']:,}** requests answered · **{figures['completion_tokens']:,}** tokens generated "
            f"· **{figures['tokens_per_sec']:.1f}** tokens/s now"), port

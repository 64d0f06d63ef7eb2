"""Chat tab: talk to a run's checkpoint or any model folder, tokens streamed as they come; the model reloads
when a newer checkpoint appears (studio.chat_session)."""

from __future__ import annotations

import threading
from typing import Any, Optional

import gradio as gr

from slm_core.errors import SLMError
from studio.allow import AllowBox
from studio.chat_session import ChatSession, StopFlags
from studio.model_picker import chat_choices  # runs, their artifacts, cached Hub models
from studio.security import check_path
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Chat"
ENGINES = [("auto", "auto"), ("native torch", "native"), ("onnxruntime-genai", "onnx")]
CONCURRENT = 8  # replies streaming at once (browser tabs); the engine decodes them in one batch
STOPPED = "\n\n_(stopped)_"  # ends a reply that Stop cut short; not part of what the model is shown next turn
BUSY = ("A reply is still being written: wait for it or press Stop, then send. Your message stays in the box.")


def build(ctx) -> None:
    session = ChatSession(ctx.runs_dir, auto_build=True, allow_list=ctx.paths)  # 'auto' builds a run's genai export once, in the background
    stops = StopFlags()  # one per browser session: Stop ends this tab's reply, not every tab's
    with gr.Row():
        source = gr.Dropdown([], value=None, allow_custom_value=True, label="Model", scale=3, elem_id="chat-model",
                             info="a run (with a checkpoint), a checkpoint / quantized / Hugging Face folder, "
                                  "or a Hub id (cached, or downloaded when online)")
        tag = gr.Radio([("best", "best"), ("latest", "latest")], value="best", label="Checkpoint", scale=1)
        backend = gr.Radio(ENGINES, value="auto", label="Engine", scale=1, elem_id="chat-engine",
                           info="auto: the fastest that can run the model")
        load = gr.Button("Load", scale=0, min_width=100)
    info = gr.Markdown("Pick a model; it loads on the first message.", elem_id="chat-info")
    system = gr.Textbox("", label="System prompt", lines=1, max_lines=4, elem_id="chat-system",
                        placeholder="e.g. You are a concise assistant. (instruction-tuned models only: it goes "
                                    "through the model's chat template)")
    allow = AllowBox(ctx, "chat-allow")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=440, buttons=["copy"], elem_id="chat-bot",
                                 placeholder="Base models continue your text; instruction-tuned models answer it.")
            with gr.Row():
                text = gr.Textbox(placeholder="Type a prompt and press Enter", show_label=False, scale=5,
                                  elem_id="chat-input", lines=1)
                send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button("Stop", size="sm", elem_id="chat-stop")
                clear = gr.Button("Clear", size="sm")
            stats = gr.Markdown("", elem_id="chat-stats")
        with gr.Column(scale=1, min_width=240):
            settings = _sampling()
    inputs = [text, chatbot, source, tag, *settings, backend, system]
    replying = Replying()

    def lock(request: gr.Request):
        """Before a reply: Send goes off. A message sent while this page's reply is written (Enter) is not queued
        unseen behind it: the page says so, and the message stays in the box."""
        if not replying.enter(request.session_hash):  # a notice, and the chain ends: no reply is queued
            gr.Warning(BUSY, title="Still replying")
            raise gr.Error(BUSY, visible=False, print_exception=False)
        return gr.update(interactive=False, value="Replying…")

    def respond(request: gr.Request, message_text, history, src, checkpoint, *values):
        try:
            check_path(ctx, src, "model")
            yield from reply(session, stops.get(request.session_hash), message_text, history, src, checkpoint,
                             *values)
        finally:
            replying.leave(request.session_hash)

    def stop_reply(request: gr.Request) -> None:
        stops.get(request.session_hash).set()

    def unlock(request: gr.Request):
        return gr.skip() if replying.busy(request.session_hash) else gr.update(interactive=True, value="Send")

    outputs = [chatbot, text, stats, info]
    # As LM Studio and ChatGPT do, Send is off while a reply is written (Stop ends it): a message sent meanwhile
    # would wait unseen behind it. Enter meanwhile says so (lock) and keeps the message in the box.
    # Queued (a notice reaches the page only through the queue), beside the replies: never waits behind one.
    sent = send.click(lock, None, send, concurrency_limit=None, **QUIET).success(
        respond, inputs, outputs, api_name="chat", concurrency_limit=CONCURRENT, concurrency_id="chat",
        show_progress="hidden")
    submitted = text.submit(lock, None, send, concurrency_limit=None, trigger_mode="multiple", **QUIET).success(
        respond, inputs, outputs, concurrency_limit=CONCURRENT, concurrency_id="chat", **QUIET)
    for event in (sent, submitted):  # after a reply, whether it ended well or not
        event.then(unlock, None, send, **QUIET)
        event.failure(unlock, None, send, **QUIET)
    # Undocumented, not private: a client (and the test of this) can stop its own session's reply.
    # Not queued: setting a flag must not wait behind the page's other events (the reply it stops among them).
    stop.click(stop_reply, None, None, api_name="chat_stop", api_visibility="undocumented", queue=False)
    clear.click(lambda: ([], ""), None, [chatbot, stats], **QUIET)
    loaded = load.click(lambda s, t, b: load_model(session, check_path(ctx, s, "model"), t, b),
                        [source, tag, backend], info, **PRIVATE)
    for event in (sent, submitted, loaded):
        allow.after(event, [("model", source)])

    def choices():
        sources = chat_choices(ctx.runs_dir)  # each run and its artifacts, then the cached Hub models
        return gr.update(choices=sources, value=sources[0][1] if sources else None)

    ctx.tabs[TITLE].select(lambda current: gr.update(choices=chat_choices(ctx.runs_dir))
                           if current else choices(), source, source, **QUIET)
    ctx.on_load.append(dict(fn=choices, outputs=source))


def _sampling() -> list[Any]:
    return [
        gr.Slider(0, 2, 0.8, step=0.05, label="Temperature", info="0 = greedy"),
        gr.Slider(0, 200, 50, step=1, label="Top-k", info="0 = off"),
        gr.Slider(0.05, 1, 1.0, step=0.05, label="Top-p"),
        gr.Slider(1, 2, 1.1, step=0.05, label="Repetition penalty"),
        gr.Slider(1, 1024, 200, step=1, label="Max new tokens"),
        gr.Textbox("", label="Seed", placeholder="blank: random"),
    ]


def load_model(session: ChatSession, source: Optional[str], tag: str, backend: str = "auto") -> str:
    if not source:
        return message("error", "Pick a run or type a model folder first.")
    try:
        with session.lock:
            session.ensure(source, tag, backend)
    except SLMError as error:
        return message("error", str(error))
    return session.describe()


def reply(session: ChatSession, stop_flag: threading.Event, text: str, history: list, source: Optional[str],
          tag: str, temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed, backend: str = "auto",
          system: str = ""):
    """Stream one reply into the chat: yields (history, textbox, stats, info). `system` is the system prompt
    (chat-template models only; a model without one continues text, and the reply says it was ignored)."""
    history = list(history or [])
    if not (text or "").strip():
        yield history, text, gr.skip(), gr.skip()
        return
    if not source:
        yield history, text, message("error", "Pick a model first."), gr.skip()
        return
    stop_flag.clear()
    before, past = list(history), without_marks(history)
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
    yield history, "", "_generating…_", gr.skip()
    settings = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                    repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
                    seed=int(seed) if str(seed or "").strip().lstrip("-").isdigit() else None)
    stats: dict = {}
    # Every update repeats the stats and info values as they stand: Gradio sends nothing for an unchanged value,
    # while gr.skip() makes it build a new component per update, most of an update's cost: benchmarks/bench_chat.py
    about = None  # the model that answers, said once it is loaded
    try:
        for delta in session.stream(text, past, source, tag, settings, stats, backend, system=system):
            history[-1]["content"] += delta
            about = about or session.describe()
            yield history, gr.skip(), "_generating…_", about  # not "": each update would wipe a message typed now
            if stop_flag.is_set():
                break
    except SLMError as error:
        yield before, text, message("error", str(error)), gr.skip()
        return
    done = "stopped" if stop_flag.is_set() else "done"
    if stop_flag.is_set():
        history[-1]["content"] += STOPPED
    # The box is left as it is: the last update carries every value in full, and "" would wipe a message typed
    # meanwhile (the first update emptied it).
    yield history, gr.skip(), speed_text(stats, done) + system_note(stats), about or session.describe()


class Replying:
    """The browser sessions with a reply streaming now (one at a time per page)."""

    def __init__(self):
        self.sessions: set[str] = set()
        self.lock = threading.Lock()

    def enter(self, session: Optional[str]) -> bool:
        """Mark `session` replying; False when it already is."""
        if not session:
            return True  # a direct call without a browser session
        with self.lock:
            if session in self.sessions:
                return False
            self.sessions.add(session)
            return True

    def leave(self, session: Optional[str]) -> None:
        with self.lock:
            self.sessions.discard(session)

    def busy(self, session: Optional[str]) -> bool:
        with self.lock:
            return session in self.sessions


def without_marks(history: list) -> list:
    """The conversation as the model saw it: the "(stopped)" the page adds to a cut-short reply taken off."""
    out = []
    for turn in history:
        content = turn.get("content")
        if turn.get("role") == "assistant":
            if isinstance(content, str):
                content = content.removesuffix(STOPPED)
            elif isinstance(content, list):
                content = [{**part, "text": part["text"].removesuffix(STOPPED)}
                           if isinstance(part, dict) and isinstance(part.get("text"), str) else part for part in content]
        out.append({**turn, "content": content})
    return out


def system_note(stats: dict) -> str:
    """Said under a reply whose system prompt had nowhere to go."""
    if not stats.get("system_ignored"):
        return ""
    return ("\n\n" + message("warn", "The system prompt was ignored: this model has no chat template (a base model "
                                     "continues your text as typed)."))


def speed_text(stats: dict, state: str) -> str:
    """Tokens, first-token latency, decode speed and engine of one reply (shown under every reply)."""
    ttft = stats.get("ttft_s")
    first = f"first token {ttft * 1000:.0f} ms · " if ttft is not None else ""
    engine = f" · {stats['engine']}" if stats.get("engine") else ""
    engine += f" · _{stats['engine_note']}_" if stats.get("engine_note") else ""
    return (f"{stats.get('tokens', 0)} tokens in {stats.get('seconds', 0):.1f} s · {first}"
            f"**{stats.get('tokens_per_sec', 0):.1f} tokens/s** · {state}{engine}")

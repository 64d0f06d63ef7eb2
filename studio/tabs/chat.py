"""Chat tab: talk to a run's checkpoint or any model folder, tokens streamed as they come; the model reloads
when a newer checkpoint appears (studio.chat_session). Every chat is saved as it goes (studio.chat_saved): open,
continue, rename, delete, search and export it; edit a message or regenerate an answer, keeping the other branch;
a context meter and what to do when the context fills; a draft model for speculative decoding."""

from __future__ import annotations

import threading
from typing import Any, Optional

import gradio as gr

from slm_core.errors import SLMError
from slm_core.run.conversations import ConversationStore
from studio import chat_saved
from studio.allow import AllowBox
from studio.chat_saved import STOPPED, ChatLog
from studio.chat_session import POLICIES, ChatSession, StopFlags, draft_choices
from studio.desktop.browse import GGUF, add_browse
from studio.model_picker import chat_choices  # runs, their artifacts, cached Hub models
from studio.security import check_path
from studio.tabs import PRIVATE, QUIET, message

TITLE = "Chat"
ENGINES = [("auto", "auto"), ("native torch", "native"), ("onnxruntime-genai", "onnx")]
CONCURRENT = 8  # replies streaming at once (browser tabs); the engine decodes them in one batch
POLICY_CHOICES = list(zip(("drop the oldest turns", "stop and say so"), POLICIES))
BUSY = ("A reply is still being written: wait for it or press Stop, then send. Your message stays in the box.")


def build(ctx) -> None:
    session = ChatSession(ctx.runs_dir, auto_build=True, allow_list=ctx.paths)  # 'auto' builds a run's genai export once, in the background
    store = ConversationStore(ctx.runs_dir)
    stops = StopFlags()  # one per browser session: Stop ends this tab's reply, not every tab's
    with gr.Row():
        source = gr.Dropdown([], value=None, allow_custom_value=True, label="Model", scale=3, elem_id="chat-model",
                             info="a run (with a checkpoint), a checkpoint / quantized / Hugging Face folder, "
                                  "or a Hub id (cached, or downloaded when online)")
        add_browse(ctx, source, "folder")  # desktop app only: the system's dialogs
        add_browse(ctx, source, "file", GGUF, label="GGUF…")
        tag = gr.Radio([("best", "best"), ("latest", "latest")], value="best", label="Checkpoint", scale=1)
        backend = gr.Radio(ENGINES, value="auto", label="Engine", scale=1, elem_id="chat-engine",
                           info="auto: the fastest that can run the model")
        load = gr.Button("Load", scale=0, min_width=100)
    ctx.shared["chat.model"] = (source, tag)  # the Runs tab's family tree opens a model here ("Chat with it")
    with gr.Row():
        draft = gr.Dropdown([("none", "")], value="", label="Draft model", scale=3, elem_id="chat-draft",
                            info="speculative decoding: a smaller model with the same tokenizer drafts tokens this "
                                 "model checks (same text at temperature 0); a run `slm shrink` made from it is offered")
        add_browse(ctx, draft, "folder")
        policy = gr.Radio(POLICY_CHOICES, value="drop", label="When the context is full", scale=2,
                          elem_id="chat-policy", info="the system prompt is always kept")
    info = gr.Markdown("Pick a model; it loads on the first message.", elem_id="chat-info")
    system = gr.Textbox("", label="System prompt", lines=1, max_lines=4, elem_id="chat-system",
                        placeholder="e.g. You are a concise assistant. (instruction-tuned models only: it goes "
                                    "through the model's chat template)")
    allow = AllowBox(ctx, "chat-allow")
    conversation = gr.State(None)  # the open conversation's id (studio.chat_saved), per browser session
    focus = gr.State(None)  # the Chatbot index whose versions the switcher shows (None: the last answer)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=230):
            saved = _saved_panel()
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=440, buttons=["copy"], elem_id="chat-bot",
                                 editable="user", sanitize_html=True, render_markdown=True,
                                 placeholder="Base models continue your text; instruction-tuned models answer it.")
            with gr.Row():
                older = gr.Button("◀", size="sm", min_width=40, scale=0, elem_id="chat-older")
                versions = gr.Markdown("", elem_id="chat-versions")
                newer = gr.Button("▶", size="sm", min_width=40, scale=0, elem_id="chat-newer")
            with gr.Row():
                text = gr.Textbox(placeholder="Type a prompt and press Enter", show_label=False, scale=5,
                                  elem_id="chat-input", lines=1)
                send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button("Stop", size="sm", elem_id="chat-stop")
                clear = gr.Button("New conversation", size="sm", elem_id="chat-new")
            stats = gr.Markdown("", elem_id="chat-stats")
        with gr.Column(scale=1, min_width=240):
            settings = _sampling()
    inputs = [text, chatbot, source, tag, *settings, backend, system, draft, policy, conversation]
    replying = Replying()

    def lock(request: gr.Request):
        """Before a reply: Send goes off. A message sent while this page's reply is written (Enter) is not queued
        unseen behind it: the page says so, and the message stays in the box."""
        if not replying.enter(request.session_hash):  # a notice, and the chain ends: no reply is queued
            gr.Warning(BUSY, title="Still replying")
            raise gr.Error(BUSY, visible=False, print_exception=False)
        return gr.update(interactive=False, value="Replying…")

    def streamed(request: gr.Request, log: ChatLog, message_text, history, src, checkpoint, *values,
                 box: bool = True):
        try:
            check_path(ctx, src, "model")
            check_path(ctx, values[-3] or None, "model")  # the draft
            for chat, typed, *rest in reply(session, stops.get(request.session_hash), message_text, history, src,
                                            checkpoint, *values[:-1], log=log):
                yield chat, typed if box else gr.skip(), *rest, log.conversation.id
        finally:
            replying.leave(request.session_hash)

    def respond(request: gr.Request, message_text, history, src, checkpoint, *values):
        log = ChatLog.resume(store, values[-1], history or [])
        yield from streamed(request, log, message_text, history, src, checkpoint, *values)

    # gr.EventData, not gr.EditData / gr.RetryData: those fail before the handler runs on a call without event data
    # (a script), where this says what is missing.
    def edited(request: gr.Request, data: gr.EventData, history, *values):
        yield from _branch(request, data, history, True, *values)

    def retried(request: gr.Request, data: gr.EventData, history, *values):
        yield from _branch(request, data, history, False, *values)

    def _branch(request, data, history, edit, message_text, src, checkpoint, *values):
        check_path(ctx, src, "model")
        check_path(ctx, values[-3] or None, "model")  # the draft
        index = (getattr(data, "_data", None) or {}).get("index")
        index = index[0] if isinstance(index, (tuple, list)) else index
        if not isinstance(index, int):
            raise gr.Error("Edit or regenerate names no message: use the buttons under a message.")
        if not replying.enter(request.session_hash):
            raise gr.Error(BUSY)
        try:
            log, before, message_text = chat_saved.branch_log(store, values[-1], index, history or [], edit)
        except SLMError as error:
            replying.leave(request.session_hash)
            raise gr.Error(str(error)) from None
        yield from streamed(request, log, message_text, before, src, checkpoint, *values, box=False)

    def stop_reply(request: gr.Request) -> None:
        stops.get(request.session_hash).set()

    def unlock(request: gr.Request):
        return gr.skip() if replying.busy(request.session_hash) else gr.update(interactive=True, value="Send")

    outputs = [chatbot, text, stats, info, conversation]
    # As LM Studio and ChatGPT do, Send is off while a reply is written (Stop ends it): a message sent meanwhile
    # would wait unseen behind it. Enter meanwhile says so (lock) and keeps the message in the box.
    # Queued (a notice reaches the page only through the queue), beside the replies: never waits behind one.
    sent = send.click(lock, None, send, concurrency_limit=None, **QUIET).success(
        respond, inputs, outputs, api_name="chat", concurrency_limit=CONCURRENT, concurrency_id="chat",
        show_progress="hidden")
    submitted = text.submit(lock, None, send, concurrency_limit=None, trigger_mode="multiple", **QUIET).success(
        respond, inputs, outputs, concurrency_limit=CONCURRENT, concurrency_id="chat", **QUIET)
    branch_inputs = [chatbot, text, source, tag, *settings, backend, system, draft, policy, conversation]
    rewritten = chatbot.edit(edited, branch_inputs, outputs, concurrency_limit=CONCURRENT, concurrency_id="chat",
                             **QUIET)
    regenerated = chatbot.retry(retried, branch_inputs, outputs, concurrency_limit=CONCURRENT,
                                concurrency_id="chat", **QUIET)
    for event in (sent, submitted):  # after a reply, whether it ended well or not
        event.then(unlock, None, send, **QUIET)
        event.failure(unlock, None, send, **QUIET)
    # Undocumented, not private: a client (and the test of this) can stop its own session's reply.
    # Not queued: setting a flag must not wait behind the page's other events (the reply it stops among them).
    stop.click(stop_reply, None, None, api_name="chat_stop", api_visibility="undocumented", queue=False)
    loaded = load.click(lambda s, t, b: load_model(session, check_path(ctx, s, "model"), t, b),
                        [source, tag, backend], info, **PRIVATE)
    for event in (sent, submitted, loaded):
        allow.after(event, [("model", source)])
    _wire_saved(ctx, store, saved, chatbot, conversation, focus, versions, older, newer, stats, clear, system,
                [sent, submitted, rewritten, regenerated])

    def choices():
        sources = chat_choices(ctx.runs_dir)  # each run and its artifacts, then the cached Hub models
        return gr.update(choices=sources, value=sources[0][1] if sources else None)

    ctx.tabs[TITLE].select(lambda current: gr.update(choices=chat_choices(ctx.runs_dir))
                           if current else choices(), source, source, **QUIET)
    ctx.on_load.append(dict(fn=choices, outputs=source))
    def drafts(picked):
        try:
            return gr.update(choices=draft_choices(ctx.runs_dir, check_path(ctx, picked, "model")), value="")
        except gr.Error:  # a refused folder: the reply says so; no draft to offer meanwhile
            return gr.update(choices=[("none", "")], value="")

    source.change(drafts, source, draft, **QUIET)


def _saved_panel() -> dict:
    """The conversations list and its actions (left of the chat)."""
    panel = {}
    panel["search"] = gr.Textbox("", label="Search conversations", placeholder="title or text", elem_id="chat-search")
    panel["list"] = gr.Dropdown([], value=None, label="Conversations", elem_id="chat-conversations",
                                info="newest first; pick one to open and continue it")
    panel["title"] = gr.Textbox("", label="Title", elem_id="chat-title")
    with gr.Row():
        panel["rename"] = gr.Button("Rename", size="sm", elem_id="chat-rename")
        panel["delete"] = gr.Button("Delete", size="sm", variant="stop", elem_id="chat-delete")
    with gr.Row():
        panel["markdown"] = gr.DownloadButton("Markdown", size="sm", interactive=False, elem_id="chat-export-md")
        panel["jsonl"] = gr.DownloadButton("JSONL (training data)", size="sm", interactive=False,
                                           elem_id="chat-export-jsonl")
    panel["note"] = gr.Markdown("", elem_id="chat-saved-note")
    return panel


def _wire_saved(ctx, store: ConversationStore, panel: dict, chatbot, conversation, focus, versions, older, newer,
                stats, clear, system, replies: list) -> None:
    """The list, search, open, rename, delete, export, New conversation and the versions switcher."""

    def listing(query, current):
        choices = chat_saved.list_choices(store, query)
        return gr.update(choices=choices, value=current if current in {v for _, v in choices} else None)

    def files(conversation_id):
        md, jsonl = chat_saved.exports(store, conversation_id)
        return (gr.update(value=md, interactive=md is not None), gr.update(value=jsonl, interactive=jsonl is not None))

    def after_reply(conversation_id, query):
        opened = chat_saved.open_or_none(store, conversation_id)
        return (listing(query, conversation_id), chat_saved.title_of(opened), *files(conversation_id),
                chat_saved.alternatives_text(opened, None), None)

    outputs = [panel["list"], panel["title"], panel["markdown"], panel["jsonl"], versions, focus]
    for event in replies:
        event.then(after_reply, [conversation, panel["search"]], outputs, **QUIET)

    def open_one(conversation_id):
        opened = chat_saved.open_or_none(store, conversation_id)
        if opened is None:
            note = message("error", f"{conversation_id} is damaged and cannot be opened: delete it") \
                if conversation_id else ""
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), note, gr.skip()
        return (chat_saved.display(opened), opened.id, opened.title, *files(opened.id), opened.system,
                chat_saved.alternatives_text(opened, None), "", None)

    panel["list"].input(open_one, panel["list"],
                        [chatbot, conversation, panel["title"], panel["markdown"], panel["jsonl"], system, versions,
                         panel["note"], focus], **QUIET)
    panel["search"].change(listing, [panel["search"], conversation], panel["list"], **QUIET)

    def rename(conversation_id, title, query):
        try:
            store.rename(conversation_id or "", title)
        except SLMError as error:
            return gr.skip(), message("error", str(error)), gr.skip(), gr.skip()
        return listing(query, conversation_id), message("ok", "Renamed."), *files(conversation_id)

    panel["rename"].click(rename, [conversation, panel["title"], panel["search"]],
                          [panel["list"], panel["note"], panel["markdown"], panel["jsonl"]], **QUIET)

    def delete(conversation_id, picked, query):
        entry = picked or conversation_id
        if not entry:
            return gr.skip(), gr.skip(), gr.skip(), message("error", "Pick a conversation to delete.")
        try:
            store.delete(entry)
        except SLMError as error:
            return gr.skip(), gr.skip(), gr.skip(), message("error", str(error))
        gone = entry == conversation_id
        return (listing(query, None if gone else conversation_id), [] if gone else gr.skip(),
                None if gone else conversation_id, message("ok", "Deleted."))

    panel["delete"].click(delete, [conversation, panel["list"], panel["search"]],
                          [panel["list"], chatbot, conversation, panel["note"]], **QUIET)

    def new_conversation(query):
        return ([], "", None, listing(query, None), "", gr.update(value=None, interactive=False),
                gr.update(value=None, interactive=False), "", None)

    clear.click(new_conversation, panel["search"], [chatbot, stats, conversation, panel["list"], panel["title"],
                                                    panel["markdown"], panel["jsonl"], versions, focus], **QUIET)

    def picked(data: gr.SelectData, conversation_id):
        index = data.index[0] if isinstance(data.index, (tuple, list)) else data.index
        return index, chat_saved.alternatives_text(chat_saved.open_or_none(store, conversation_id), index)

    chatbot.select(picked, conversation, [focus, versions], **QUIET)

    def switched(step):
        def handler(conversation_id, index):
            shown = chat_saved.switch(store, conversation_id, index, step)
            if shown is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return chat_saved.display(shown), chat_saved.alternatives_text(shown, index), *files(conversation_id)
        return handler

    for button, step in ((older, -1), (newer, 1)):
        button.click(switched(step), [conversation, focus], [chatbot, versions, panel["markdown"], panel["jsonl"]],
                     **QUIET)
    ctx.tabs[TITLE].select(listing, [panel["search"], conversation], panel["list"], **QUIET)
    ctx.on_load.append(dict(fn=lambda: gr.update(choices=chat_saved.list_choices(store)), outputs=panel["list"]))


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
          system: str = "", draft: str = "", policy: str = "drop", log: Optional[ChatLog] = None):
    """Stream one reply into the chat: yields (history, textbox, stats, info). `system` is the system prompt
    (chat-template models only; a model without one continues text, and the reply says it was ignored); `draft` a
    model that drafts for speculative decoding; `policy` what a full context does (studio.chat_session.fit_context);
    `log` saves the message and the answer in a conversation as they come (studio.chat_saved)."""
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
    if log is not None:
        log.user(text, source, tag, settings, system or "")
    # Every update repeats the stats and info values as they stand: Gradio sends nothing for an unchanged value,
    # while gr.skip() makes it build a new component per update, most of an update's cost: benchmarks/bench_chat.py
    about = None  # the model that answers, said once it is loaded
    try:
        for delta in session.stream(text, past, source, tag, settings, stats, backend, system=system,
                                    draft=draft or None, policy=policy or "drop"):
            history[-1]["content"] += delta
            about = about or session.describe()
            yield history, gr.skip(), "_generating…_", about  # not "": each update would wipe a message typed now
            if stop_flag.is_set():
                break
    except SLMError as error:
        if log is not None:
            log.forget_user()
        yield before, text, message("error", str(error)), gr.skip()
        return
    done = "stopped" if stop_flag.is_set() else "done"
    if log is not None:
        log.answer(history[-1]["content"], stats, stop_flag.is_set())
    if stop_flag.is_set():
        history[-1]["content"] += STOPPED
    # The box is left as it is: the last update carries every value in full, and "" would wipe a message typed
    # meanwhile (the first update emptied it).
    yield (history, gr.skip(), speed_text(stats, done) + context_text(stats) + system_note(stats),
           about or session.describe())


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


def context_text(stats: dict) -> str:
    """The context meter: tokens the conversation holds now (prompt and answer) of the model's context, counted
    with its tokenizer, and the turns dropped to make room."""
    context = stats.get("context")
    if not context:
        return ""
    used = stats.get("prompt_tokens", 0) + stats.get("tokens", 0)
    line = f"\n\ncontext: **{min(used, context):,} / {context:,} tokens** ({min(used / context, 1):.0%})"
    if stats.get("dropped_turns"):
        n = stats["dropped_turns"]
        line += f" · the oldest {n} turn{'s' if n != 1 else ''} left out to fit (the model no longer sees them)"
    return line


def speed_text(stats: dict, state: str) -> str:
    """Tokens, first-token latency, decode speed and engine of one reply (shown under every reply)."""
    ttft = stats.get("ttft_s")
    first = f"first token {ttft * 1000:.0f} ms · " if ttft is not None else ""
    engine = f" · {stats['engine']}" if stats.get("engine") else ""
    engine += f" · _{stats['engine_note']}_" if stats.get("engine_note") else ""
    if stats.get("draft_accept_rate") is not None:
        speedup = f", speed-up {stats['speedup']:.2f}×" if stats.get("speedup") else ""
        engine += f" · draft acceptance **{stats['draft_accept_rate']:.0%}**{speedup}"
    return (f"{stats.get('tokens', 0)} tokens in {stats.get('seconds', 0):.1f} s · {first}"
            f"**{stats.get('tokens_per_sec', 0):.1f} tokens/s** · {state}{engine}")

"""The model the Chat and Compare tabs talk to: one engine per model in a process-wide pool, loaded lazily,
reloaded when its checkpoint changes, on the backend `pick_backend` chooses."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core import allowlist
from slm_core.allowlist import AllowList, confined, readable
from slm_core.models.templates import content_text, format_prompt

BACKENDS = ("auto", "native", "onnx")
SLOTS = 4  # concurrent replies per model decoded together
POOL_SIZE = 4  # models kept loaded at once (Chat, both Compare sides, one spare)
# A reply reaches the page at most this often, each update carrying every token decoded since the last (the first
# at once): an update is Python work that slows decoding, and 20 a second still reads as a smooth stream.
# benchmarks/bench_chat.py (the Chat page rows)
PAGE_UPDATE_S = 0.05
POLICIES = ("drop", "stop")  # a full context: drop the oldest turns after the system prompt, or stop and say so


def checkpoint_stamp(source: Path, tag: str) -> Optional[int]:
    """mtime of the checkpoint that `tag` resolves to (changes when training writes a new one)."""
    for name in (tag, "latest", "best"):
        state = source / "checkpoints" / name / "state.json"
        if state.exists():
            return state.stat().st_mtime_ns
    try:
        return source.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def build_prompt(message: str, history: list[dict], template: Optional[str], tokenizer: Any = None) -> str:
    """Completion mode (no template): the message itself. Chat mode: the conversation in the template, or
    in the model's own Jinja chat template (a Hub model's tokenizer, or a run tuned in it: 'model')."""
    own = getattr(tokenizer, "chat_template", None) and template in (None, "model")
    if not template and not own:
        return message
    turns = [{"role": m.get("role", "user"), "content": content_text(m.get("content"))}
             for m in history if m.get("role") in ("user", "assistant", "system")]
    turns.append({"role": "user", "content": message})
    if own:
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True)
    return format_prompt(turns, template)


def with_system(history: list[dict], system: str) -> list[dict]:
    """The conversation with `system` as its first turn (in place of any system turn it had)."""
    return [{"role": "system", "content": system.strip()}] + [m for m in history if m.get("role") != "system"]


class ChatSession:
    """The model one picker points at, held through the shared engine pool. The lock only guards
    loading; generation runs concurrently inside the engine."""

    def __init__(self, runs_dir: Path, backend: str = "auto", auto_build: bool = False,
                 allow_list: Optional[AllowList] = None):
        self.runs_dir = Path(runs_dir)
        self.allow_list = allow_list  # the page's folders: a model outside them is never opened
        self.backend = backend
        self.auto_build = auto_build  # 'auto' builds a run's genai export in the background (the Chat tab)
        self.note: Optional[str] = None  # said under the reply: a background build under way or failed
        self.failures_said: set = set()  # (model, failure) said once already: not under every reply again
        self.loaded: Any = None  # the native LoadedModel (None for an onnxruntime-genai folder)
        self.engine: Any = None
        self.key: Optional[tuple] = None
        self.path: Optional[Path] = None
        self.template: Optional[str] = None
        self.lock = threading.Lock()
        self.choice: Any = None  # slm_core.infer.engine_choice.Choice: the engine and why

    def resolve(self, source: str) -> Path:
        """A folder, a run in the runs folder, or a Hub id / GGUF file (slm_core.models.sources: the cached snapshot,
        downloaded when missing; offline it fails at once naming what the cache holds)."""
        with confined(None if self.allow_list is None else self.allow_list.roots):
            return self._resolve(source)

    def _resolve(self, source: str) -> Path:
        from slm_core.models.sources import HUB_ID, resolve_external

        path, in_runs = Path(source).expanduser(), self.runs_dir / source
        if allowlist.refuses(path):  # a run name or a Hub id, else refused before anything looks at it
            if path.is_absolute() or not (len(path.parts) == 1 or HUB_ID.match(source)):
                readable(path)
            path = in_runs
        if path.is_dir() or in_runs.is_dir():
            return readable(path if path.is_dir() else in_runs)  # a symlink out of an allowed folder is refused
        return resolve_external(source) or in_runs

    def ensure(self, source: str, tag: str = "best", backend: Optional[str] = None,
               draft: Optional[str] = None) -> tuple[Any, bool]:
        """The engine for (source, tag, backend, draft), loading it if needed; returns (engine, reloaded?).
        `draft`: a model with the same tokenizer for speculative decoding (native torch only)."""
        from slm_core.errors import SLMError

        path = self.resolve(source)
        backend = backend or self.backend
        if backend not in BACKENDS:
            raise SLMError(f"engine {backend!r} is unknown: use auto, native or onnx")
        draft_path = self.resolve(draft) if draft else None
        if draft_path is not None:
            if backend == "onnx":
                raise SLMError("a draft model runs on the native engine: pick the native (or auto) engine, "
                               "or no draft")
            backend = "native"
        threads = thread_budget(self.runs_dir)
        # measured once (engine_choice); 'auto' in the Chat tab also has a run's genai export built in the background
        self.choice = choose_engine(path, tag, backend, threads, self.runs_dir, build=self.auto_build)
        kind, where = self.choice.engine, Path(self.choice.folder)
        if kind == "onnx":  # genai's thread count is fixed when its session is made: a new count is a new engine
            threads = threads or self.choice.threads
        key = (str(where), tag, checkpoint_stamp(path, tag), kind, threads if kind == "onnx" else None)
        if draft_path is not None:
            key += (str(draft_path), checkpoint_stamp(draft_path, tag))
        if key == self.key and self.engine is not None and not getattr(self.engine, "closed", False):
            if kind == "native":
                self.engine.threads = threads or self.choice.threads
            self.note = self._build_note(path)
            return self.engine, False
        self.engine, self.loaded, self.template = _POOL.get(key, lambda: _load(kind, where, tag, threads, draft_path))
        if kind == "native":
            self.engine.threads = threads or self.choice.threads
        self.key, self.path = key, Path(where)
        self.note = self._build_note(path)
        return self.engine, True

    def _build_note(self, path: Path) -> Optional[str]:
        """build_note, with a failed build said under one reply, not under every one after it."""
        note = build_note(self.choice)
        export = getattr(self.choice, "export", "")
        if note is not None and export.startswith("failed"):
            if (str(path), export) in self.failures_said:
                return None
            self.failures_said.add((str(path), export))
        return note

    def describe(self) -> str:
        loaded = self.loaded
        if self.engine is None:
            return "No model loaded."
        threads = getattr(self.engine, "decode_threads", None) or self.engine.threads or "all"
        engine = f" Engine: **{self.engine.description}**, {threads} thread(s)" + (
            f" ({self.choice.reason})." if self.choice is not None else ".")
        if loaded is None:  # an onnxruntime-genai folder
            mode = f"chat mode ({self.template} template)" if self.template else "completion mode"
            return f"Loaded `{self.path}`: {mode}." + engine
        from slm_core.models.estimate import count_parameters

        # From the config, not parameters(): a quantized model keeps its int8/int4 weights in buffers, so
        # parameters() would count only its embeddings and norms (an int4 3.5M model read "0.5M").
        params = count_parameters(loaded.config.model)["total"]
        step = _checkpoint_step(Path(loaded.path))
        own = getattr(loaded.tokenizer, "chat_template", None) and loaded.template in (None, "model")
        mode = ("chat mode (the model's own chat template)" if own else f"chat mode ({loaded.template} template)"
                if loaded.template else "completion mode (a base model continues your text)")
        where = f"`{Path(loaded.path).parent.parent.name if step is not None else loaded.path}`"
        return (f"Loaded {where}" + (f" at step {step:,}" if step is not None else "") +
                f": {params / 1e6:.1f}M parameters, {mode}." + engine)

    def stream(self, message: str, history: list[dict], source: str, tag: str, settings: dict,
               stats: dict, backend: Optional[str] = None, system: Optional[str] = None,
               draft: Optional[str] = None, policy: str = "drop") -> Iterator[str]:
        """Text deltas of the reply; `stats` receives tokens, seconds, ttft_s, tokens_per_sec, engine, and
        system_ignored when a system prompt was given to a model without a chat template (completion mode);
        prompt_tokens and context (the context meter), dropped_turns; with a draft, draft_accept_rate and speedup."""
        from slm_core.infer.sampling import SamplingParams

        with self.lock:
            engine, reloaded = self.ensure(source, tag, backend, draft)
            template = self.template
        stats.update(reloaded=reloaded, engine=engine.description, engine_note=self.note,
                     engine_choice=self.choice.reason if self.choice is not None else None)
        params = SamplingParams(**settings)
        ids, stop_ids, ignored, dropped = fit_context(engine, template, message, history, system, params, policy)
        if ignored:
            stats["system_ignored"] = True
        stats.update(prompt_tokens=len(ids), context=context_of(engine), dropped_turns=dropped)
        yield from engine.stream(ids, params, stats, stop_ids=stop_ids, interval_s=PAGE_UPDATE_S)


def context_of(engine: Any) -> Optional[int]:
    return getattr(engine, "context_length", None)


def answer_room(context: int, max_new_tokens: int) -> int:
    """Tokens kept free for the answer when deciding the context is full: the answer's budget, at most a quarter
    of the context (past it the engine slides its window, so a long answer still ends)."""
    return max(1, min(int(max_new_tokens), context // 4))


def fit_context(engine: Any, template: Optional[str], message: str, history: list[dict], system: Optional[str],
                params: Any, policy: str = "drop") -> tuple[list[int], Optional[list[int]], bool, int]:
    """prompt_ids for the next reply within the model's context, counted with the model's tokenizer: `policy`
    'drop' drops the oldest turns after the system prompt until the prompt and room for the answer fit; 'stop'
    refuses with a message. Returns (ids, stop ids, system ignored?, turns dropped)."""
    from slm_core.errors import SLMError

    if policy not in POLICIES:
        raise SLMError(f"context policy {policy!r} is unknown: use drop or stop")
    context = context_of(engine)
    history = [m for m in history if m.get("role") != "system"]
    dropped = 0
    while True:
        ids, stop_ids, ignored = prompt_ids(engine.tokenizer, template, message, history, system)
        if not context or len(ids) + answer_room(context, params.max_new_tokens) <= context:
            return ids, stop_ids, ignored, dropped
        if policy == "stop":
            raise SLMError(f"the conversation fills the model's context ({len(ids):,} of {context:,} tokens, with "
                           f"room for the answer): start a new conversation, shorten the message, or set 'When the "
                           f"context is full' to drop the oldest turns")
        if not history:  # the message alone: the engine keeps its last tokens (it slides its window)
            return ids, stop_ids, ignored, dropped
        cut = next((i for i in range(1, len(history)) if history[i].get("role") == "user"), len(history))
        history, dropped = history[cut:], dropped + 1


def prompt_ids(tokenizer: Any, template: Optional[str], message: str, history: list[dict],
               system: Optional[str] = None) -> tuple[list[int], Optional[list[int]], bool]:
    """(prompt token ids, stop ids or None, system prompt ignored?) for the next reply.

    A Hub model's own Jinja chat template (slm_core.models.templates) renders the whole conversation, the system
    prompt first, and its end-of-turn tokens stop the reply; a run tuned in a named template renders it
    there; a model with neither continues the message as typed, so a system prompt has nowhere to go."""
    own = bool(getattr(tokenizer, "chat_template", None)) and template in (None, "model")
    ignored = bool((system or "").strip()) and not (own or template)
    if (system or "").strip() and not ignored:
        history = with_system(history, system)
    if own:
        turns = [{"role": m.get("role", "user"), "content": content_text(m.get("content"))}
                 for m in history if m.get("role") in ("user", "assistant", "system")]
        ids = tokenizer.apply_chat_template(turns + [{"role": "user", "content": message}],
                                            add_generation_prompt=True, tokenize=True)
        return ids, tokenizer.stop_ids, ignored
    return tokenizer.encode(build_prompt(message, history, template, tokenizer)), None, ignored


class StopFlags:
    """One Stop flag per browser session (Gradio's session hash). Replies of every tab are decoded in one
    batch, so a page-wide flag would stop them all; each tab's Stop sets only its own flag."""

    LIMIT = 512  # sessions remembered; the oldest are forgotten (a reply in flight holds its own flag)

    def __init__(self):
        self.flags: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def get(self, session: Optional[str]) -> threading.Event:
        if not session:  # no browser session (a direct call): a flag of its own
            return threading.Event()
        with self.lock:
            flag = self.flags.pop(session, None) or threading.Event()
            self.flags[session] = flag  # most recently used last
            while len(self.flags) > self.LIMIT:
                self.flags.pop(next(iter(self.flags)))
            return flag


class _EnginePool:
    """One engine per (model, checkpoint stamp, backend) for the whole Studio process; a newer checkpoint
    of the same model replaces (and closes) the older engine."""

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple, load) -> tuple:
        with self.lock:
            if key in self.entries:
                return self.entries[key]
            for old in [k for k in self.entries if k[0] == key[0] and k[1] == key[1]]:
                self.entries.pop(old)[0].close()
            while len(self.entries) >= POOL_SIZE:  # the least recently loaded model goes first
                self.entries.pop(next(iter(self.entries)))[0].close()
            self.entries[key] = load()
            return self.entries[key]

    def clear(self) -> None:
        with self.lock:
            for engine, _, _ in self.entries.values():
                engine.close()
            self.entries.clear()


_POOL = _EnginePool()


def build_note(choice: Any) -> Optional[str]:
    """The line under a reply while the Chat tab's background genai export is built, or once it failed (the
    rule, the build and its state: slm_core.infer.engine_choice and slm_core.infer.genai_build)."""
    export = getattr(choice, "export", "")
    if export == "building":
        return ("building an onnxruntime-genai export of this model in the background (once); replies come from "
                "native torch until it is ready, then auto times both and keeps the faster")
    if export.startswith("failed"):
        return f"the background onnxruntime-genai export {export}; staying on native torch"
    return None


def _load(kind: str, where: Path, tag: str, threads: Optional[int], draft: Optional[Path] = None) -> tuple:
    """(engine, LoadedModel or None, template) for `where`; `draft`: a model that drafts for speculative decoding,
    refused unless it shares the model's tokenizer (slm_core.infer.speculative.check_draft)."""
    if kind == "onnx":
        from slm_core.infer.onnx import OnnxEngine

        engine = OnnxEngine(where, threads=threads, slots=SLOTS)
        return engine, None, engine.template
    from slm_core.infer.engine import Engine
    from slm_core.infer.openmp import in_fresh_thread
    from slm_core.models.load import load_model

    def load() -> tuple:  # not on this (Gradio worker) thread: it would keep an OpenMP team (slm_core.infer.openmp)
        loaded = load_model(where, tag=tag)
        drafter = None
        if draft is not None:
            from slm_core.infer.speculative import check_draft

            drafter = load_model(draft, tag=tag)
            check_draft(loaded.tokenizer, drafter.tokenizer, loaded.model.config.vocab_size,
                        drafter.model.config.vocab_size, draft.name)
        return (Engine(loaded.model, loaded.tokenizer, slots=SLOTS, threads=threads,
                       draft=drafter.model if drafter else None), loaded, loaded.template)

    return in_fresh_thread(load)


def pick_backend(path: Path, tag: str, backend: str = "auto") -> tuple[str, Path]:
    """('onnx' | 'native', folder to load): choose_engine's answer."""
    choice = choose_engine(path, tag, backend)
    return choice.engine, Path(choice.folder)


def choose_engine(path: Path, tag: str, backend: str = "auto", threads: Optional[int] = None,
                  runs_dir: Optional[Path] = None, build: bool = False) -> Any:
    """The engine every path picks the same way (slm_core.infer.engine_choice): a genai folder runs on
    onnxruntime-genai; auto times native torch against the run's fresh genai exports once per checkpoint, dtype and
    thread count, and keeps the faster (cached under the runs folder). `build`: a run without an export gets one
    built in the background (slm_core.infer.genai_build), timed once it exists."""
    from slm_core.infer.engine_choice import choose

    return choose(path, tag, backend, threads=threads, runs_dir=runs_dir, build=build)


def thread_budget(runs_dir: Path) -> Optional[int]:
    """1 thread while a training run is active (two busy thread pools on the same cores slow both to a
    crawl), else None (the runtime's default: every core)."""
    from slm_core.run.runs import list_runs

    try:
        busy = any(row.get("state") == "running" for row in list_runs(runs_dir))
    except OSError:
        busy = False
    return 1 if busy else None


def _checkpoint_step(path: Path) -> Optional[int]:
    import json

    try:
        return int(json.loads((path / "state.json").read_text())["step"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return None


def draft_choices(runs_dir: Path, source: Optional[str]) -> list[tuple[str, str]]:
    """What the Draft picker offers for the model `source`: no draft, then a run `slm shrink` made from it (the
    natural draft: its distilled student), then every other run or artifact whose lineage names the same tokenizer
    (slm_core.run.lineage: read from files, no model loaded). The engine checks the tokenizer again on load."""
    from slm_core.run.drafts import find_shrunk_draft
    from slm_core.run.lineage import node_at
    from studio.models import model_sources

    choices = [("none", "")]
    if not source:
        return choices
    runs_dir = Path(runs_dir)
    target = Path(source) if Path(source).is_dir() else runs_dir / source
    shrunk = find_shrunk_draft(str(source), runs_dir)
    if shrunk is not None:
        layers = f"{shrunk['layers']} layer{'s' if shrunk['layers'] != 1 else ''}"
        choices.append((f"{shrunk['name']} (shrunk from this model: {layers})", shrunk["path"]))
    wanted = (node_at(target) or {}).get("tokenizer") if target.is_dir() else None
    if not wanted:
        return choices
    taken = {str(Path(v).resolve()) for _, v in choices if v} | {str(target.resolve())}
    for label, value in model_sources(runs_dir):
        folder = Path(value)
        if str(folder.resolve()) not in taken and (node_at(folder) or {}).get("tokenizer") == wanted:
            choices.append((label, value))
    return choices

"""The model the Chat and Compare tabs talk to: loaded lazily, kept between messages, reloaded when its
checkpoint changes on disk (a run still training writes a new best).

Every chat goes through an inference engine (slm_core.engine.Engine, or slm_core.runtime_onnx.OnnxEngine
for an onnxruntime-genai folder) held in one process-wide pool, so the Chat tab, both sides of Compare
and every open browser tab share one engine per model, and concurrent replies are decoded together
instead of waiting for each other. `pick_backend` chooses the fastest runtime that can run the model
(onnxruntime-genai when the model is, or has, an up-to-date genai export and the package is
installed; else native torch); the user can override it. Threads are budgeted: one while a training
run is active in the runs folder, so chat and training do not fight over the same cores.

The one place in studio/ that holds torch objects, and only through slm_core modules imported inside
functions: importing this module imports no torch. Base models continue the text as typed
(completion); models tuned with an instruction template get the whole conversation rendered by
`slm_core.templates.format_prompt`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core.templates import content_text, format_prompt

BACKENDS = ("auto", "native", "onnx")
SLOTS = 4  # concurrent replies per model decoded together
POOL_SIZE = 4  # models kept loaded at once (Chat, both Compare sides, one spare)


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


class ChatSession:
    """The model one picker points at, held through the shared engine pool. The lock only guards
    loading; generation runs concurrently inside the engine."""

    def __init__(self, runs_dir: Path, backend: str = "auto"):
        self.runs_dir = Path(runs_dir)
        self.backend = backend
        self.loaded: Any = None  # the native LoadedModel (None for an onnxruntime-genai folder)
        self.engine: Any = None
        self.key: Optional[tuple] = None
        self.path: Optional[Path] = None
        self.template: Optional[str] = None
        self.lock = threading.Lock()

    def resolve(self, source: str) -> Path:
        path = Path(source).expanduser()
        return path if path.is_dir() else self.runs_dir / source

    def ensure(self, source: str, tag: str = "best", backend: Optional[str] = None) -> tuple[Any, bool]:
        """The engine for (source, tag, backend), loading it if needed; returns (engine, reloaded?)."""
        path = self.resolve(source)
        backend = backend or self.backend
        if backend not in BACKENDS:
            from slm_core.errors import SLMError

            raise SLMError(f"engine {backend!r} is unknown: use auto, native or onnx")
        threads = thread_budget(self.runs_dir)
        kind, where = pick_backend(path, tag, backend)
        key = (str(where), tag, checkpoint_stamp(path, tag), kind, threads if kind == "onnx" else None)
        if key == self.key and self.engine is not None and not getattr(self.engine, "closed", False):
            if kind == "native":
                self.engine.threads = threads
            return self.engine, False
        self.engine, self.loaded, self.template = _POOL.get(key, lambda: _load(kind, where, tag, threads))
        if kind == "native":
            self.engine.threads = threads
        self.key, self.path = key, Path(where)
        return self.engine, True

    def describe(self) -> str:
        loaded = self.loaded
        if self.engine is None:
            return "No model loaded."
        engine = f" Engine: **{self.engine.description}**, {self.engine.threads or 'all'} thread(s)."
        if loaded is None:  # an onnxruntime-genai folder
            mode = f"chat mode ({self.template} template)" if self.template else "completion mode"
            return f"Loaded `{self.path}`: {mode}." + engine
        from slm_core.estimate import count_parameters

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
               stats: dict, backend: Optional[str] = None) -> Iterator[str]:
        """Text deltas of the reply; `stats` receives tokens, seconds, ttft_s, tokens_per_sec, engine."""
        from slm_core.sampling import SamplingParams

        with self.lock:
            engine, reloaded = self.ensure(source, tag, backend)
            template = self.template
        stats.update(reloaded=reloaded, engine=engine.description)
        params = SamplingParams(**settings)
        tokenizer = engine.tokenizer
        if getattr(tokenizer, "chat_template", None) and template in (None, "model"):
            # A Hub model's own Jinja chat template renders the whole conversation (slm_core.templates), and its
            # end-of-turn tokens stop the reply.
            turns = [{"role": m.get("role", "user"), "content": content_text(m.get("content"))}
                     for m in history if m.get("role") in ("user", "assistant", "system")]
            ids = tokenizer.apply_chat_template(turns + [{"role": "user", "content": message}],
                                                add_generation_prompt=True, tokenize=True)
            yield from engine.stream(ids, params, stats, stop_ids=tokenizer.stop_ids)
            return
        prompt = build_prompt(message, history, template, engine.tokenizer)
        yield from engine.stream(tokenizer.encode(prompt), params, stats)


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


def _load(kind: str, where: Path, tag: str, threads: Optional[int]) -> tuple:
    """(engine, LoadedModel or None, template) for `where`."""
    if kind == "onnx":
        from slm_core.runtime_onnx import OnnxEngine

        engine = OnnxEngine(where, threads=threads)
        return engine, None, engine.template
    from slm_core.checkpoint import load_model
    from slm_core.engine import Engine

    loaded = load_model(where, tag=tag)
    return Engine(loaded.model, loaded.tokenizer, slots=SLOTS, threads=threads), loaded, loaded.template


def pick_backend(path: Path, tag: str, backend: str = "auto") -> tuple[str, Path]:
    """('onnx' | 'native', folder to load). auto: onnxruntime-genai where the model is a genai folder, or a
    run whose genai export (export/onnx*) is newer than the checkpoint, and the package is installed."""
    from slm_core.runtime_onnx import available, is_genai_folder

    if is_genai_folder(path):
        return "onnx", path
    if backend == "native" or (backend == "auto" and not available()):
        return "native", path
    stamp = checkpoint_stamp(path, tag) or 0
    exports = sorted((path / "export").glob("onnx*")) if (path / "export").is_dir() else []
    fresh = [e for e in exports if is_genai_folder(e) and (e / "genai_config.json").stat().st_mtime_ns >= stamp]
    if fresh:
        return "onnx", fresh[0]  # "onnx" (fp32) sorts before "onnx-int4"
    if backend == "onnx":
        from slm_core.errors import SLMError

        raise SLMError(f"{path.name} has no onnxruntime-genai export newer than its checkpoint: export it "
                       "(Export tab, ONNX for onnxruntime-genai) or pick the native engine")
    return "native", path


def thread_budget(runs_dir: Path) -> Optional[int]:
    """1 thread while a training run is active (two busy thread pools on the same cores slow both to a
    crawl), else None (the runtime's default: every core)."""
    from slm_core.runs import list_runs

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

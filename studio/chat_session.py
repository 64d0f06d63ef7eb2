"""The model the Chat tab talks to: loaded lazily, kept between messages, reloaded when its checkpoint
changes on disk (a run still training writes a new best).

The one place in studio/ that holds torch objects, and only through slm_core.checkpoint and
slm_core.generate imported inside methods: importing this module imports no torch. Base models
continue the text as typed (completion); models tuned with an instruction template get the whole
conversation rendered by `slm_core.templates.format_prompt`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core.templates import content_text, format_prompt


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


def build_prompt(message: str, history: list[dict], template: Optional[str]) -> str:
    """Completion mode (no template): the message itself. Chat mode: the conversation in the template."""
    if not template:
        return message
    turns = [{"role": m.get("role", "user"), "content": content_text(m.get("content"))}
             for m in history if m.get("role") in ("user", "assistant", "system")]
    turns.append({"role": "user", "content": message})
    return format_prompt(turns, template)


class ChatSession:
    """One loaded model shared by every chat on the page; generation is serialized by a lock because the
    KV cache lives inside the model."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.loaded: Any = None
        self.key: Optional[tuple] = None
        self.lock = threading.Lock()

    def resolve(self, source: str) -> Path:
        path = Path(source).expanduser()
        return path if path.is_dir() else self.runs_dir / source

    def ensure(self, source: str, tag: str = "best") -> tuple[Any, bool]:
        """The loaded model for (source, tag), loading it if needed; returns (loaded, reloaded?)."""
        path = self.resolve(source)
        key = (str(path), tag, checkpoint_stamp(path, tag))
        if key == self.key and self.loaded is not None:
            return self.loaded, False
        from slm_core.checkpoint import load_model

        self.loaded, self.key = None, None  # free the old model before loading the next
        self.loaded = load_model(path, tag=tag)
        self.key = key
        return self.loaded, True

    def describe(self) -> str:
        loaded = self.loaded
        if loaded is None:
            return "No model loaded."
        params = sum(p.numel() for p in loaded.model.parameters())
        step = _checkpoint_step(Path(loaded.path))
        mode = (f"chat mode ({loaded.template} template)" if loaded.template
                else "completion mode (a base model continues your text)")
        where = f"`{Path(loaded.path).parent.parent.name if step is not None else loaded.path}`"
        return (f"Loaded {where}" + (f" at step {step:,}" if step is not None else "") +
                f": {params / 1e6:.1f}M parameters, {mode}.")

    def stream(self, message: str, history: list[dict], source: str, tag: str, settings: dict,
               stats: dict) -> Iterator[str]:
        """Text deltas of the reply; `stats` receives tokens, seconds, tokens_per_sec at the end."""
        from slm_core.generate import stream_text

        with self.lock:
            loaded, reloaded = self.ensure(source, tag)
            stats["reloaded"] = reloaded
            prompt = build_prompt(message, history, loaded.template)
            yield from stream_text(loaded, prompt, stats=stats, use_template=False, **settings)


def _checkpoint_step(path: Path) -> Optional[int]:
    import json

    try:
        return int(json.loads((path / "state.json").read_text())["step"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return None

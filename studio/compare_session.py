"""Two models answering the same prompt, streamed together: the Compare tab's pair of chat sessions, decoded
concurrently and read in turn."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

from slm_core.allowlist import AllowList
from slm_core.config import load_run_config
from slm_core.errors import SLMError
from studio.chat_session import ChatSession
from studio.tabs import has_checkpoint, run_names

TUNED_MODES = ("lora", "dpo", "orpo", "grpo")  # runs made from a base whose "before" is that base


def lora_base(run_dir: Path) -> Optional[str]:
    """The model a LoRA, DPO, ORPO or GRPO run started from (its config.yaml's train.init_from), as a picker value:
    with adapters (config.uses_lora) the base is the run with its adapter off; a full run is compared with the
    model it was trained from. A run of the same runs folder comes by its path, anything else (a folder, a Hub id)
    as written. None: not such a run."""
    try:
        config = load_run_config(run_dir / "config.yaml")
    except SLMError:
        return None
    base = config.train.init_from
    if not base or not (config.uses_lora or config.train.mode in TUNED_MODES):
        return None
    sibling = run_dir.parent / str(base)
    return str(sibling) if not Path(str(base)).is_absolute() and (sibling / "status.json").exists() else str(base)


def lora_runs(runs_dir: Path) -> list[tuple[str, str]]:
    """(name, path) of the LoRA / DPO / ORPO / GRPO runs with a checkpoint, newest first: what "before vs after"
    offers."""
    root = Path(runs_dir)
    return [(name, str(root / name)) for name in run_names(root)
            if has_checkpoint(root / name) and lora_base(root / name)]


class PairSession:
    """Models A and B, each held by its own ChatSession over the shared engine pool."""

    def __init__(self, runs_dir: Path, allow_list: Optional[AllowList] = None):
        self.sides = (ChatSession(runs_dir, allow_list=allow_list), ChatSession(runs_dir, allow_list=allow_list))

    def load(self, sources: tuple[str, str], tag: str = "best") -> list[bool]:
        """Load both models before streaming (so loading never counts as generation time); (reloaded A, B)."""
        reloaded = []
        for session, source in zip(self.sides, sources):
            with session.lock:
                reloaded.append(session.ensure(source, tag)[1])
        return reloaded

    def stream(self, message: str, histories: tuple[list, list], sources: tuple[str, str], settings: dict,
               stats: tuple[dict, dict], tag: str = "best",
               should_stop: Optional[Callable[[], bool]] = None, system: Optional[str] = None
               ) -> Iterator[tuple[int, str]]:
        """Yield (side, text delta) alternating between A (0) and B (1) until both end or `should_stop()`.

        `stats[side]` gets tokens, seconds, ttft_s and tokens_per_sec (its engine request's) as the text comes.
        `system`: one system prompt for both sides (each renders it in its own chat template)."""
        self.load(sources, tag)
        raw: tuple[dict, dict] = ({}, {})
        streams = [self.sides[i].stream(message, histories[i], sources[i], tag, settings, raw[i], system=system)
                   for i in (0, 1)]
        live = [True, True]
        try:
            while any(live) and not (should_stop and should_stop()):
                for side in (0, 1):
                    if not live[side]:
                        continue
                    delta = next(streams[side], None)
                    live[side] = delta is not None
                    stats[side].update(raw[side], done=not live[side])
                    if delta:
                        yield side, delta
        finally:
            for stream in streams:  # releases each session's lock when stopped early
                stream.close()

    def describe(self, side: int) -> str:
        return self.sides[side].describe()

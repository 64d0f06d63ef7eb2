"""Two models answering the same prompt, streamed together: the Compare tab's model holder.

Each side is a studio.chat_session.ChatSession (one loaded model, reloaded when its checkpoint
changes, prompts rendered in the model's own template), so the same reply logic serves Chat and
Compare. The two generators are stepped in turn, one piece of text each, so both answers grow on the
page at once. Each side's tokens/s counts only the time spent inside its own generator: wall-clock time
would charge each model for the other's turns and halve both figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from studio.chat_session import ChatSession


class PairSession:
    """Models A and B, each held by its own ChatSession (its own lock: the KV cache lives in the model)."""

    def __init__(self, runs_dir: Path):
        self.sides = (ChatSession(runs_dir), ChatSession(runs_dir))

    def load(self, sources: tuple[str, str], tag: str = "best") -> list[bool]:
        """Load both models before streaming (so loading never counts as generation time); (reloaded A, B)."""
        reloaded = []
        for session, source in zip(self.sides, sources):
            with session.lock:
                reloaded.append(session.ensure(source, tag)[1])
        return reloaded

    def stream(self, message: str, histories: tuple[list, list], sources: tuple[str, str], settings: dict,
               stats: tuple[dict, dict], tag: str = "best",
               should_stop: Optional[Callable[[], bool]] = None) -> Iterator[tuple[int, str]]:
        """Yield (side, text delta) alternating between A (0) and B (1) until both end or `should_stop()`.

        `stats[side]` gets tokens, seconds (its own generator time) and tokens_per_sec as the text comes."""
        self.load(sources, tag)
        raw: tuple[dict, dict] = ({}, {})
        streams = [self.sides[i].stream(message, histories[i], sources[i], tag, settings, raw[i]) for i in (0, 1)]
        busy, live = [0.0, 0.0], [True, True]
        try:
            while any(live) and not (should_stop and should_stop()):
                for side in (0, 1):
                    if not live[side]:
                        continue
                    started = time.perf_counter()
                    delta = next(streams[side], None)
                    busy[side] += time.perf_counter() - started
                    live[side] = delta is not None
                    tokens = raw[side].get("tokens", 0)
                    stats[side].update(tokens=tokens, seconds=busy[side], done=not live[side],
                                       tokens_per_sec=tokens / busy[side] if busy[side] > 0 else 0.0)
                    if delta:
                        yield side, delta
        finally:
            for stream in streams:  # releases each session's lock when stopped early
                stream.close()

    def describe(self, side: int) -> str:
        return self.sides[side].describe()

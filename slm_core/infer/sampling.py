"""What every backend shares after the logits: `SamplingParams` (one request's knobs), `sample_next` (their
meaning on one row of logits) and `TextStream` (token bytes to clean text, stop strings held back)."""

from __future__ import annotations

import codecs
import re
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from slm_core.validate import (
    validate_sampling,  # out-of-range knobs are refused, never clamped
)


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 50  # 0 means off
    top_p: float = 1.0  # 1 means off
    repetition_penalty: float = 1.0  # 1 means off
    seed: Optional[int] = None  # None: a fresh seed per request
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings (not part of the reply)

    def __post_init__(self) -> None:
        validate_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1

    def make_generator(self, device) -> torch.Generator:
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed if self.seed is not None else int(time.time_ns() % 2**31))
        return generator


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty on the token ids in `seen`: push them down whatever their sign."""
    if penalty != 1.0 and seen.numel():
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def sample_next(logits: torch.Tensor, history: torch.Tensor, temperature: float, top_k: int, top_p: float,
                repetition_penalty: float, generator: torch.Generator) -> int:
    """logits (V,) fp32 → one token id. temperature 0 means greedy."""
    logits = penalize(logits, history, repetition_penalty)
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -float("inf")
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses top_p
        logits[order[drop]] = -float("inf")
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# Unicode category Cc is exactly U+0000-001F and U+007F-009F; newline and tab stay. One regex pass per
# delta: this runs for every token of every stream.
_UNWANTED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def clean(text: str) -> str:
    """Drop raw control characters (category Cc) except newline and tab, and any U+FFFD."""
    return _UNWANTED.sub("", text)


class TextStream:
    """Token bytes in, clean text deltas out; `stopped` turns True once a stop string has appeared.

    `feed(bytes)` returns the text that is safe to show now; `finish()` returns what was held back."""

    def __init__(self, stop: tuple[str, ...] = ()):
        # errors="ignore": bytes that can never form a character (a model's broken byte sequences) vanish
        # instead of becoming U+FFFD; an unfinished character is held inside the decoder until complete.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stop = tuple(s for s in stop if s)
        self.checks_stops = bool(self._stop)
        self._held = ""
        self.stopped = False
        self.text = ""  # everything emitted so far

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        return self._emit(self._held + clean(self._decoder.decode(data)), final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        return self._emit(self._held + clean(self._decoder.decode(b"", final=True)), final=True)

    def _emit(self, pending: str, final: bool) -> str:
        cut = min((i for i in (pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            out = pending[:cut]
        elif final or not self._stop:
            self._held, out = "", pending
        else:
            keep = self._partial_stop(pending)
            self._held, out = pending[len(pending) - keep:], pending[:len(pending) - keep]
        self.text += out
        return out

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string (held until resolved)."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best

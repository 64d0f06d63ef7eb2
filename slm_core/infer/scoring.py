"""Log-probabilities of given tokens (a prompt, a finished completion) for the server's `logprobs` and `echo`:
one forward pass of the model over the sequence, run by the native engine's decode loop between two steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.errors import SLMError
from slm_core.infer.engine import Engine, Request, Sequence
from slm_core.infer.sampling import SamplingParams

MAX_TOP = 20  # alternatives per position at most, as vLLM's default allows


@dataclass
class Scored:
    """For a sequence of ids: log p(ids[i] | ids[:i]) for i >= 1, and the `top` best (id, logprob) at each."""
    logprobs: list[float]
    top: list[list[tuple[int, float]]]


class _ScoringSequence(Sequence):
    """A sequence whose prefill is a full forward pass of the model (every position's logits, not only the
    last one's), kept as `scored`; the engine then samples one token after it, which the caller drops."""

    def __init__(self, model: torch.nn.Module, ids: list[int], top: int):
        super().__init__(list(ids), SamplingParams(max_new_tokens=1, temperature=0.0), frozenset())
        self.model, self.top = model, top
        self.scored: Optional[Scored] = None

    def start(self, decoder, slot: int) -> torch.Tensor:
        self.slot, self.tokens = slot, list(self.prompt)
        logits = self.model(torch.tensor([self.prompt], device=decoder.device))[0].float()  # (T, V)
        self.scored = score_logits(logits, self.prompt, self.top)
        return logits[-1]


class _ScoringRequest(Request):
    def __init__(self, model: torch.nn.Module, ids: list[int], top: int):
        super().__init__(list(ids), SamplingParams(max_new_tokens=1, temperature=0.0), ())
        self.seq = _ScoringSequence(model, ids, top)


def score_logits(logits: torch.Tensor, ids: list[int], top: int) -> Scored:
    """logits (T, V) of a forward pass over `ids` (T) → their Scored (T - 1 positions)."""
    logprobs = F.log_softmax(logits[:-1].float(), dim=-1)
    target = torch.tensor(ids[1:], device=logprobs.device)
    picked = logprobs.gather(-1, target[:, None])[:, 0].tolist() if len(ids) > 1 else []
    if top <= 0 or len(ids) < 2:
        return Scored(picked, [[] for _ in picked])
    values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return Scored(picked, [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())])


def score(engine: Engine, ids: list[int], top: int = 0) -> Scored:
    """Log-probabilities of `ids` under `engine`'s model (its weights, in the dtype it serves).

    Queued as a request of the engine's own decode loop rather than run in the caller's thread: `slm serve`
    decodes on the thread that loaded the model (Engine.run_here), and a forward pass from an HTTP thread beside
    it would start a second OpenMP team on the same cores (measured ~30% slower decoding, see run_here) and run
    the model from two threads at once. In the loop it waits at most one decode step, and the streams in flight
    wait for it as they do for another request's prefill."""
    if len(ids) > engine.context_length:
        raise SLMError(f"cannot score {len(ids)} tokens: the model's context is {engine.context_length}")
    request = _ScoringRequest(engine.model, ids, min(top, MAX_TOP))
    engine._enqueue(request, 1)  # one token to sample after the sequence: the engine's unit of work
    for _ in request:  # raises the exception that ended it, if any
        pass
    if request.seq.scored is None:
        raise SLMError("the server is shutting down: the request was cancelled before it was scored")
    return request.seq.scored

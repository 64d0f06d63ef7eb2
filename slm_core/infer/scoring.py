"""Log-probabilities of given tokens (a prompt, a finished completion) for the server's `logprobs` and `echo`:
one forward pass of the model over the sequence, run by the native engine's decode loop between two steps."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.errors import SLMError
from slm_core.infer.engine import Engine, Request, Sequence
from slm_core.infer.sampling import SamplingParams

MAX_TOP = 20  # alternatives per position at most, as vLLM's default allows


@dataclass
class Scored:
    """For a sequence of ids: log p(ids[i] | ids[:i]) for i >= 1, the `top` best (id, logprob) at each, and the
    distribution over the token after the last one (log-probabilities, (V,))."""
    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    last: torch.Tensor
    count: int = 0

    def after(self, token: int) -> tuple[float, list[tuple[int, float]]]:
        """The log-probability of `token` after the sequence, and the best alternatives there."""
        values, indices = self.last.topk(min(self.count, self.last.shape[-1]))
        return float(self.last[token]), list(zip(indices.tolist(), values.tolist()))


class _ScoringSequence(Sequence):
    """A sequence whose prefill is a full forward pass of the model (every position's logits, not only the
    last one's), kept as `scored`; the engine then samples the token after it with the request's settings."""

    def __init__(self, model: torch.nn.Module, ids: list[int], top: int, params: SamplingParams, stop_ids):
        super().__init__(list(ids), params, frozenset(stop_ids))
        self.model, self.top = model, top
        self.scored: Optional[Scored] = None

    def start(self, decoder, slot: int) -> torch.Tensor:
        # What Sequence.start prepares for sampling, without its prefill: nothing decodes after this token.
        self.slot, self.tokens = slot, list(self.prompt)
        self.generator = self.params.make_generator(decoder.device)
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(decoder.config.vocab_size, dtype=torch.bool, device=decoder.device)
            self.seen[torch.tensor(self.tokens, device=decoder.device)] = True
        logits = self.model(torch.tensor([self.prompt], device=decoder.device))[0].float()  # (T, V)
        self.scored = score_logits(logits, self.prompt, self.top)
        return logits[-1].clone()  # sampling may penalize it in place


class ScoringRequest(Request):
    """A request of one token whose prompt is scored on the way (`seq.scored` once it has started)."""

    def __init__(self, model: torch.nn.Module, ids: list[int], top: int, params: SamplingParams, stop_ids):
        super().__init__(list(ids), params, stop_ids)
        self.seq = _ScoringSequence(model, ids, top, params, stop_ids)


def score_logits(logits: torch.Tensor, ids: list[int], top: int) -> Scored:
    """logits (T, V) of a forward pass over `ids` (T) → their Scored (T - 1 positions, and the next token's)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    last, logprobs = logprobs[-1], logprobs[:-1]
    target = torch.tensor(ids[1:], device=logprobs.device, dtype=torch.long)
    picked = logprobs.gather(-1, target[:, None])[:, 0].tolist() if len(ids) > 1 else []
    if top <= 0 or len(ids) < 2:
        return Scored(picked, [[] for _ in picked], last, top)
    values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return Scored(picked, [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())], last, top)


def submit_scoring(engine: Engine, ids: list[int], top: int = 0,
                   params: Optional[SamplingParams] = None) -> ScoringRequest:
    """Score `ids` under `engine`'s model (its weights, in the dtype it serves) and sample one token after them
    with `params` (default: greedy); iterate the request for that token, then read `seq.scored`.

    Queued as a request of the engine's own decode loop rather than run in the caller's thread: `slm serve`
    decodes on the thread that loaded the model (Engine.run_here), and a forward pass from an HTTP thread beside
    it would start a second OpenMP team on the same cores (measured ~30% slower decoding, see run_here) and run
    the model from two threads at once. In the loop it waits at most one decode step, and the streams in flight
    wait for it as they do for another request's prefill."""
    if len(ids) > engine.context_length:
        raise SLMError(f"cannot score {len(ids)} tokens: the model's context is {engine.context_length}")
    params = replace(params or SamplingParams(temperature=0.0), max_new_tokens=1)
    request = ScoringRequest(engine.model, ids, min(top, MAX_TOP), params, (engine.tokenizer.eot_id,))
    engine._enqueue(request, 1)  # the engine's own queue: submit() would make a plain request
    return request


def score(engine: Engine, ids: list[int], top: int = 0) -> Scored:
    """Log-probabilities of `ids` (see submit_scoring); the token sampled after them is dropped."""
    request = submit_scoring(engine, ids, top)
    for _ in request:  # raises the exception that ended it, if any
        pass
    return scored_of(request)


def scored_of(request: ScoringRequest) -> Scored:
    if request.seq.scored is None:
        raise SLMError("the server is shutting down: the request was cancelled before it was scored")
    return request.seq.scored

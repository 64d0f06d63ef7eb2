"""Speculative decoding: a small draft model with the target's tokenizer proposes k tokens, the target checks them in
one pass over its static KV cache (Decoder.extend) and keeps the prefix it agrees with, plus one token of its own.

Which output is exact (Leviathan et al. 2023, Chen et al. 2023): at temperature > 0 a draft token d is kept with
probability min(1, p(d)/q(d)) and, on rejection, one is drawn from norm(max(0, p − q)), so every token is distributed
as the target's own sampling would draw it, whatever the draft. p and q are both the processed distributions
(repetition penalty over the tokens so far, drafts included, then temperature, top-k, top-p: the steps of
slm_core.infer.sampling.sample_next), so every combination of those knobs is exact; the knobs on q only change how
often drafts are kept. At temperature 0 a draft is kept when it is the target's (penalized) argmax: the same text
as plain decoding, up to floating-point rounding (the check is a several-row multiply where plain decoding does one
row; it reads the same weight copy, so only near-ties of two logits can go the other way). A seed gives a
reproducible reply, but not the one plain decoding draws with that seed: the random numbers are used differently.

A rejected draft needs no undo: the caches are indexed by position, and the next pass writes those positions first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from slm_core.errors import SLMError
from slm_core.infer.decoder import Decoder
from slm_core.infer.sampling import SamplingParams, penalize
from slm_core.run.drafts import find_shrunk_draft
from slm_core.run.runs import runs_dir

MIN_K, MAX_K, START_K = 1, 8, 4  # drafted tokens per round: adapted between MIN_K and MAX_K (0: see PROBE_EVERY)
BASELINE_STEPS = 2  # one-row target steps timed once, for the speed-up estimate (the faster counts: the first warms up)
# k is chosen from what the last rounds measured, each round's weight decaying by this factor: a story's boilerplate
# and its names differ in how predictable they are, so the estimates follow the text within a few rounds.
DECAY = 0.7
PRIOR_ACCEPT, PRIOR_WEIGHT = 0.6, 2.0  # the acceptance assumed before any round, worth this many draft tokens
PROBE_EVERY = 8  # a draft not worth its cost drafts nothing (plain target steps), retried with k=1 this often


def check_draft(target_tokenizer, draft_tokenizer, target_vocab: int, draft_vocab: int, name: str) -> None:
    """Refuse a draft whose token ids are not the target's: its proposals would mean other text."""
    same = (target_tokenizer is not None and draft_tokenizer is not None
            and target_tokenizer.fingerprint() == draft_tokenizer.fingerprint())
    if not same or target_vocab != draft_vocab:
        raise SLMError(f"the draft {name} does not share the model's tokenizer (fingerprint or vocabulary size "
                       f"differs): pick a draft trained with the same tokenizer, e.g. a run made by `slm shrink`")


# ---- a shrunk student as its teacher's draft: found by slm_core.run.drafts (torch-free, for the Studio) -----

def resolve_draft(draft: str, target: str, root: Optional[Path] = None) -> tuple[str, str]:
    """`--draft` as a model source and a line saying what it is: 'auto' finds a shrunk student of `target`."""
    if draft != "auto":
        return draft, f"draft: {draft}"
    run = find_shrunk_draft(target, root)
    if run is None:
        where = runs_dir(root)
        raise SLMError(f"--draft auto found no run in {where} shrunk from {target}: make one with "
                       f"`slm shrink {target} --layers N`, or name the draft model")
    return run["path"], (f"draft: {run['name']} (auto: {run['layers']} layer{'s' if run['layers'] != 1 else ''} shrunk from {target} "
                         f"by `slm shrink`, "
                         f"{run['state']} at step {run['step']})")


# ---- one round: draft k, verify in one pass, keep the agreed prefix --------------------------------

def _processed(logits: torch.Tensor, history: Optional[torch.Tensor], params: SamplingParams) -> torch.Tensor:
    """logits (V,) → what sample_next draws from: probabilities (V,) at temperature > 0, else the penalized logits."""
    logits = logits.clone()
    if history is not None:
        penalize(logits, history.nonzero()[:, 0], params.repetition_penalty)
    if params.temperature <= 0:
        return logits
    logits /= params.temperature
    if params.top_k and params.top_k < logits.numel():
        logits[logits < torch.topk(logits, params.top_k).values[-1]] = -float("inf")
    if 0.0 < params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        logits[order[probs.cumsum(-1) - probs > params.top_p]] = -float("inf")  # keep the token crossing top_p
    return torch.softmax(logits, dim=-1)


def _draw(dist: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(dist))
    return int(torch.multinomial(dist, 1, generator=generator))


class Speculator:
    """A draft model's one-slot decoder, what its cache holds, and the adaptive draft length k."""

    def __init__(self, draft: torch.nn.Module, max_len: int, one_row_half: Optional[bool] = None, k: int = START_K):
        self.decoder = Decoder(draft, slots=1, max_len=max_len, one_row_half=one_row_half)
        if self.decoder.max_len < max_len:
            raise SLMError(f"the draft's context ({self.decoder.max_len} tokens) is shorter than the model's "
                           f"({max_len}): pick a draft with at least the model's context length")
        self.k = k
        self.cached: list[int] = []  # the tokens in the draft's cache, positions 0..
        self.drafted = self.accepted = self.rounds = 0
        self.baseline_s: Optional[float] = None  # the target's one-row step, for the speed-up estimate
        # decayed sums behind the choice of k: draft tokens kept of those tried (a rejection ends a round's trials),
        # seconds per draft token and per verification pass
        self._kept, self._tried = PRIOR_ACCEPT * PRIOR_WEIGHT, PRIOR_WEIGHT
        self._draft_s = self._draft_n = self._verify_s = self._verify_n = 0.0
        self._plain_rounds = 0  # rounds since drafting was switched off (k == 0)

    def measure_baseline(self, target: Decoder, slot: int, position: int, token: int) -> None:
        """Time the target's plain one-row step, once, at `position`, a position the next round writes first."""
        if self.baseline_s is not None or position >= target.max_len:
            return
        times = []
        for _ in range(BASELINE_STEPS):
            start = time.perf_counter()
            target.step([slot], [token], [position])
            times.append(time.perf_counter() - start)
        self.baseline_s = min(times)

    def stats(self, tokens_per_sec: float = 0.0) -> dict:
        """Acceptance rate of drafted tokens, mean k, and the speed-up over the target alone: `tokens_per_sec`
        against the one-row step time measured once (an estimate: the step is not re-timed under changing load)."""
        out = {"draft_accept_rate": self.accepted / self.drafted if self.drafted else 0.0,
               "draft_k": self.drafted / self.rounds if self.rounds else 0.0,
               "draft_tokens": self.drafted, "draft_accepted": self.accepted}
        if self.baseline_s and tokens_per_sec:
            out["speedup"] = tokens_per_sec * self.baseline_s
        return out

    @torch.inference_mode()
    def round(self, target: Decoder, slot: int, tokens: list[int], fed: int, pending: Optional[torch.Tensor],
              seen: Optional[torch.Tensor], params: SamplingParams, generator: torch.Generator, want: int) -> list[int]:
        """The next 1..k+1 tokens after `tokens` (at most `want`), as the target alone would have drawn them.

        The target's cache holds tokens[:fed]; `pending` is its logits (V,) after tokens[-1] when fed == len(tokens)
        (right after a prefill), else None. `seen` (V,) bool: the repetition penalty's tokens, or None."""
        k = self.k
        if k == 0:  # drafting switched off: a plain step, and now and then a one-token probe
            self._plain_rounds += 1
            k = MIN_K if self._plain_rounds % PROBE_EVERY == 0 else 0
        k = max(0, min(k, want - 1, target.max_len - len(tokens)))  # every fed position stays in the cache
        clock = time.perf_counter()
        drafts, q, catch_up_s = self._draft(tokens, k, seen, params, generator)
        drafted_at = time.perf_counter()
        clock += catch_up_s  # a long catch-up (a new prompt) is no cost of drafting from here on
        feed = tokens[fed:] + drafts
        rows = target.extend(slot, feed, fed) if feed else None  # (len(feed), V)
        if pending is not None:
            p_logits = pending[None] if rows is None else torch.cat((pending[None], rows))
        else:
            p_logits = rows[len(tokens) - 1 - fed:]  # (k+1, V): row i follows tokens + drafts[:i]
        kept = self._verify(p_logits, drafts, q, seen, params, generator)
        if drafts:
            self.rounds += 1
            self.drafted += len(drafts)
            self.accepted += len(kept) - 1
            self._adapt(len(kept) - 1, len(drafts), drafted_at - clock, time.perf_counter() - drafted_at)
        return kept

    def _adapt(self, accepted: int, drafted: int, draft_s: float, verify_s: float) -> None:
        """Pick the next k from this and the last rounds: with a the chance that a draft token is kept and c the cost
        of drafting one token in verification passes, a round of k drafts yields (1 - a^(k+1)) / (1 - a) tokens for
        k·c + 1 passes (a pass over k+1 rows costs about one row's: reading the weights dominates). The k with the
        most tokens per pass wins, so k climbs to MAX_K within a round or two of high acceptance; where no k beats
        plain decoding (a < c, about), drafting stops and is retried every PROBE_EVERY rounds."""
        self._kept = DECAY * self._kept + accepted
        self._tried = DECAY * self._tried + accepted + (accepted < drafted)  # trials of the geometric run
        self._draft_s, self._draft_n = DECAY * self._draft_s + draft_s, DECAY * self._draft_n + drafted
        self._verify_s, self._verify_n = DECAY * self._verify_s + verify_s, DECAY * self._verify_n + 1
        a = min(self._kept / self._tried, 0.99)
        c = (self._draft_s / self._draft_n) / (self._verify_s / self._verify_n)
        best, best_gain = 0, 1.0  # k = 0: plain decoding, one token a pass
        for k in range(MIN_K, MAX_K + 1):
            gain = (1 - a ** (k + 1)) / (1 - a) / (k * c + 1)
            if gain > best_gain:
                best, best_gain = k, gain
        if best == 0 and self.k != 0:
            self._plain_rounds = 0
        self.k = best

    def _draft(self, tokens: list[int], k: int, seen, params, generator) -> tuple[list[int], list, float]:
        """k draft tokens after `tokens`, the distribution each was drawn from (processed as the target's; none
        at temperature 0, where only the draft's argmax matters), and the seconds a catch-up of more than a
        round's tokens (a new prompt) took."""
        if k == 0:
            return [], [], 0.0
        n = min(len(self.cached), len(tokens) - 1)  # the last token is always fed: its logits are needed
        if self.cached[:n] != tokens[:n]:  # a rejected draft, a slid window or another conversation: keep the common part
            n = next(i for i, (a, b) in enumerate(zip(self.cached, tokens)) if a != b)
        clock = time.perf_counter()
        logits = self.decoder.extend(0, tokens[n:], n)[-1]
        catch_up_s = time.perf_counter() - clock if len(tokens) - n > 2 else 0.0
        self.cached = tokens[:]
        greedy = params.temperature <= 0 and seen is None  # no processing: the raw argmax, no copies
        history = seen.clone() if seen is not None else None
        drafts, dists = [], []
        for i in range(k):
            if greedy:
                token = int(logits.argmax())
            else:
                dist = _processed(logits, history, params)
                token = _draw(dist, params, generator)
                dists.append(dist)
            drafts.append(token)
            if history is not None:
                history[token] = True
            if i < k - 1:
                logits = self.decoder.extend(0, [token], len(self.cached))[-1]
                self.cached.append(token)
        return drafts, dists, catch_up_s

    def _verify(self, p_logits: torch.Tensor, drafts: list[int], q: list, seen, params: SamplingParams,
                generator: torch.Generator) -> list[int]:
        """p_logits (len(drafts)+1, V): the accepted drafts, then the target's own token (a correction or a bonus)."""
        if params.temperature <= 0 and seen is None:  # every row's argmax at once, one conversion to Python
            best = p_logits.argmax(-1).tolist()
            n = next((i for i, (b, d) in enumerate(zip(best, drafts)) if b != d), len(drafts))
            return drafts[:n] + [best[n]]
        history = seen.clone() if seen is not None else None
        kept: list[int] = []
        for i, token in enumerate(drafts):
            p = _processed(p_logits[i], history, params)
            if params.temperature <= 0:
                best = int(torch.argmax(p))
                if best != token:
                    return kept + [best]
            elif float(torch.rand(1, generator=generator)) * float(q[i][token]) >= float(p[token]):
                residual = (p - q[i]).clamp_(min=0)  # rejected: the target's mass the draft under-proposed
                total = float(residual.sum())
                return kept + [_draw(residual / total if total > 0 else p, params, generator)]
            kept.append(token)
            if history is not None:
                history[token] = True
        return kept + [_draw(_processed(p_logits[len(drafts)], history, params), params, generator)]

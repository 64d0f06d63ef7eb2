"""Batch-1, synchronous generation for the CLI: `generate_tokens` yields token ids, `stream_text` clean text
deltas. The Studio and `slm serve` use slm_core.infer.engine."""

from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

import torch

from slm_core.errors import SLMError
from slm_core.infer.engine import Decoder, decode_one
from slm_core.infer.sampling import SamplingParams, TextStream, sample_next  # noqa: F401  (sample_next: public here too)
from slm_core.infer.speculative import Speculator
from slm_core.models.model import base_transformer
from slm_core.models.templates import format_prompt


@torch.inference_mode()
def generate_tokens(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int = 128,
                    temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0,
                    repetition_penalty: float = 1.0, seed: Optional[int] = None,
                    stop_ids: Iterable[int] = (), one_row_half: Optional[bool] = None,
                    draft: Optional[torch.nn.Module] = None, spec_stats: Optional[dict] = None) -> Iterator[int]:
    """Yield new token ids one at a time (batch 1). Stops at any of stop_ids (not yielded).

    Runs on a static-cache `Decoder` (slm_core.infer.engine) of one slot, sized for this reply; `one_row_half` as
    the Decoder takes it (False: exact fp32). `draft`: a model with the same tokenizer (checked by the caller:
    speculative.check_draft) for speculative decoding; `spec_stats` then receives its Speculator's counters."""
    core = base_transformer(model)
    if not prompt_ids:
        raise SLMError("the prompt is empty after tokenization; type something to continue from")
    params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    # Only as long as this reply can get: an imported model may allow 32k positions.
    decoder = Decoder(model, slots=1, max_len=min(core.config.context_length, len(prompt_ids) + max_new_tokens),
                      one_row_half=one_row_half)
    speculator = None if draft is None else Speculator(draft, decoder.max_len, one_row_half)
    if spec_stats is not None and speculator is not None:
        spec_stats["speculator"] = speculator
    yield from decode_one(decoder, list(prompt_ids), params, stop_ids, speculator)


def encode_prompt(tokenizer, template: Optional[str], prompt: str, use_template: bool = True) -> list[int]:
    """The prompt's ids: in the model's own Jinja chat template (a Hub model's, or a run tuned in it: template
    'model'), else in its named template, else as typed (a base model continues it)."""
    own = getattr(tokenizer, "chat_template", None) and template in (None, "model")
    if use_template and own:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True)
    if use_template and template:
        return tokenizer.encode(format_prompt({"instruction": prompt, "input": ""}, template))
    return tokenizer.encode(prompt)


def stream_text(loaded, prompt: str, max_new_tokens: int = 128, temperature: float = 0.8, top_k: int = 50,
                top_p: float = 1.0, repetition_penalty: float = 1.0, seed: Optional[int] = None,
                stats: Optional[dict] = None, use_template: bool = True, stop: Iterable[str] = (),
                one_row_half: Optional[bool] = None, draft: Optional[torch.nn.Module] = None) -> Iterator[str]:
    """Yield clean text deltas as tokens arrive (see slm_core.infer.sampling.TextStream); ends before any of the
    `stop` strings. `stats` (if given) receives tokens, seconds, ttft_s and tokens_per_sec, and with a `draft`
    (speculative decoding) draft_accept_rate, draft_k, draft_tokens and speedup (Speculator.stats)."""
    tokenizer = loaded.tokenizer
    prompt_ids = encode_prompt(tokenizer, loaded.template, prompt, use_template)
    text = TextStream(tuple(stop))
    start, first, count, spec = time.perf_counter(), None, 0, {}
    tokens = generate_tokens(loaded.model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                             repetition_penalty, seed, stop_ids=getattr(tokenizer, "stop_ids", (tokenizer.eot_id,)),
                             one_row_half=one_row_half, draft=draft, spec_stats=spec)
    for token in tokens:
        count += 1
        first = first or time.perf_counter()
        delta = text.feed(tokenizer.decode_bytes([token]))
        if stats is not None:
            _fill_stats(stats, count, start, first, spec.get("speculator"))
        if delta:
            yield delta
        if text.stopped:
            tokens.close()
            break
    tail = text.finish()
    if stats is not None:
        _fill_stats(stats, count, start, first, spec.get("speculator"))
    if tail:
        yield tail


def _fill_stats(stats: dict, count: int, start: float, first: Optional[float], speculator=None) -> None:
    now = time.perf_counter()
    decode = now - first if first else 0.0
    stats.update(tokens=count, seconds=now - start, ttft_s=(first - start) if first else None,
                 tokens_per_sec=(count - 1) / decode if count > 1 and decode > 0 else 0.0)
    if speculator is not None:
        stats.update(speculator.stats(stats["tokens_per_sec"]))


def complete(loaded, prompt: str, **kwargs) -> str:
    return "".join(stream_text(loaded, prompt, **kwargs))

"""Text generation: prefill → decode one token → sample, over a preallocated KV cache.

`generate_tokens` sees only token ids; `stream_text` is the thin layer that turns them into
UTF-8-safe text deltas for the CLI and the chat playground.
"""

from __future__ import annotations

import codecs
import time
from typing import Iterable, Iterator, Optional

import torch

from slm_core.errors import SLMError
from slm_core.lora import base_transformer


def sample_next(logits: torch.Tensor, history: torch.Tensor, temperature: float, top_k: int, top_p: float,
                repetition_penalty: float, generator: torch.Generator) -> int:
    """logits (V,) fp32 → one token id. temperature 0 means greedy."""
    if repetition_penalty != 1.0 and history.numel():
        seen = logits[history]  # CTRL-style: push already-seen tokens down whatever their sign
        logits[history] = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
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


@torch.inference_mode()
def generate_tokens(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int = 128,
                    temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0,
                    repetition_penalty: float = 1.0, seed: Optional[int] = None,
                    stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield new token ids one at a time (batch 1). Stops at any of stop_ids (not yielded)."""
    core = base_transformer(model)  # owns the KV cache, also under a peft wrapper
    context = core.config.context_length
    device = next(core.parameters()).device
    if not prompt_ids:
        raise SLMError("the prompt is empty after tokenization; type something to continue from")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
    stop = set(stop_ids)
    tokens = list(prompt_ids)[-context:]
    # Only as long as this reply can get: an imported model may allow 32k positions.
    core.setup_kv_cache(1, min(context, len(tokens) + max_new_tokens))
    try:
        logits = _prefill(model, tokens, device)
        for _ in range(max_new_tokens):
            history = torch.tensor(tokens[-context:], device=device) if repetition_penalty != 1.0 else torch.empty(0)
            token = sample_next(logits.float(), history.long(), temperature, top_k, top_p,
                                repetition_penalty, generator)
            if token in stop:
                return
            yield token
            tokens.append(token)
            if len(tokens) > context:
                # The cache is full: slide, re-reading the last half context as a fresh prefix.
                tokens = tokens[-(context // 2):]
                logits = _prefill(model, tokens, device)
            else:
                ids = torch.tensor([[token]], device=device)
                logits = model(ids, input_pos=torch.tensor([len(tokens) - 1], device=device))[0, -1]
    finally:
        core.clear_kv_cache()


def _prefill(model, tokens: list[int], device) -> torch.Tensor:
    ids = torch.tensor([tokens], device=device)
    return model(ids, input_pos=torch.arange(len(tokens), device=device))[0, -1]


def stream_text(loaded, prompt: str, max_new_tokens: int = 128, temperature: float = 0.8, top_k: int = 50,
                top_p: float = 1.0, repetition_penalty: float = 1.0, seed: Optional[int] = None,
                stats: Optional[dict] = None, use_template: bool = True) -> Iterator[str]:
    """Yield text deltas as tokens arrive. `stats` (if given) receives tokens, seconds, tokens_per_sec."""
    tokenizer = loaded.tokenizer
    if use_template and loaded.template:
        from slm_core.templates import format_prompt

        prompt = format_prompt({"instruction": prompt, "input": ""}, loaded.template)
    prompt_ids = tokenizer.encode(prompt)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start, count = time.perf_counter(), 0
    for token in generate_tokens(loaded.model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                 repetition_penalty, seed, stop_ids=(tokenizer.eot_id,)):
        count += 1
        text = decoder.decode(tokenizer.decode_bytes([token]))
        if stats is not None:
            _fill_stats(stats, count, start)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if stats is not None:
        _fill_stats(stats, count, start)
    if tail:
        yield tail


def _fill_stats(stats: dict, count: int, start: float) -> None:
    seconds = time.perf_counter() - start
    stats.update(tokens=count, seconds=seconds, tokens_per_sec=count / seconds if seconds > 0 else 0.0)


def complete(loaded, prompt: str, **kwargs) -> str:
    return "".join(stream_text(loaded, prompt, **kwargs))

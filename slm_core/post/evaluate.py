"""Perplexity of any model source on any data source, with sliding windows and a stride."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.config import load_run_config
from slm_core.data.cache import prepare_data
from slm_core.data.preference import text_data_config
from slm_core.errors import SLMError
from slm_core.models.model import base_transformer
from slm_core.models.sources import resolve_source
from slm_core.run.runs import read_json
from slm_core.validate import validate_eval

MIN_EVAL_TOKENS = 64  # fewer scored tokens than this is noise, not a measurement
SPLITS = ("all", "train", "val")


@torch.inference_mode()
def perplexity(loaded, source: Optional[str] = None, split: Optional[str] = None, stride: Optional[int] = None,
               max_tokens: Optional[int] = None, text_column: Optional[str] = None) -> dict:
    """Token-level perplexity of `loaded` (a LoadedModel) on `source`.

    No source: the model's own validation split (for an HF folder we exported, the data of the run it
    came from). A source given: all of it ("all"), unless `split` asks for "train" or "val".
    Windows of the model's context slide by `stride` (default: half a context); each token is scored
    once, with up to context-stride tokens of history, as in the usual strided evaluation.
    """
    config = loaded.config
    context = _context(loaded.model)
    validate_eval(stride, max_tokens, context)
    split = split or ("all" if source else "val")
    if split not in SPLITS:
        raise SLMError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if source:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=source,
                                                                      text_column=text_column))
    else:
        config = own_data_config(loaded)
    data = prepare_data(config, tokenizer=loaded.tokenizer, progress=False, require_windows=False)
    parts = ("train", "val") if split == "all" else (split,)
    warning = _short_data(sum(getattr(data, f"{p}_tokens") for p in parts), context, split, config.data.source)
    stride = stride or max(1, context // 2)
    total_nll, total_tokens, started = 0.0, 0, time.perf_counter()
    device = next(loaded.model.parameters()).device
    windows = (w for part in parts for w in data.iter_eval_windows(part, context, stride))
    for x, y in windows:
        logits = loaded.model(x.to(device)).float()
        y = y.to(device)
        total_nll += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100,
                                     reduction="sum").item()
        total_tokens += int((y != -100).sum())
        if max_tokens and total_tokens >= max_tokens:
            break
    if total_tokens == 0:
        raise SLMError("no tokens to evaluate: the data split is empty; use a larger source")
    loss = total_nll / total_tokens
    return {"model": str(loaded.path), "data": config.data.source, "split": split, "tokens": total_tokens,
            "loss": loss, "ppl": math.exp(min(loss, 50.0)), "seconds": time.perf_counter() - started,
            "warning": warning}


def _short_data(n_tokens: int, context: int, split: str, source: str) -> Optional[str]:
    """Refuse a split too small to mean anything; warn when it is shorter than one context window,
    where every token is scored with less history than the model can use (a lower bound on quality)."""
    where = f"the {split} split of {source!r}"
    hint = "give more text" + (", or --split train" if split == "val" else "")
    if n_tokens - 1 < MIN_EVAL_TOKENS:
        raise SLMError(f"{where} holds only {n_tokens} tokens, too few for a meaningful perplexity "
                       f"(at least {MIN_EVAL_TOKENS + 1} needed): {hint}")
    if n_tokens < context + 1:
        return (f"{where} holds {n_tokens} tokens, less than one window of the model's context ({context}); "
                f"the perplexity sees less history than the model can use: {hint}")
    return None


def own_data_config(loaded):
    """The config whose data is the model's own. A Hugging Face folder carries no data settings (its
    config is the defaults); one we exported names its origin in export.json: use the origin run's
    data, so "own validation data" is the same text for a run and its export."""
    from pathlib import Path


    origin = (read_json(Path(loaded.path) / "export.json", default=None) or {}).get("source")
    if loaded.kind != "hf" or not origin:
        return text_data_config(loaded.config, loaded.path)  # a DPO/ORPO run: its base's data
    try:
        origin_folder = resolve_source(origin)
        origin_config = load_run_config(origin_folder / "config.yaml")
    except (SLMError, OSError):
        return loaded.config  # the origin run was deleted or moved: the folder's own defaults
    return dataclasses.replace(loaded.config, data=text_data_config(origin_config, origin_folder).data)


def _context(model: torch.nn.Module) -> int:
    return base_transformer(model).config.context_length

"""Perplexity of any model source on any data source, with sliding windows and a stride."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.errors import SLMError


@torch.inference_mode()
def perplexity(loaded, source: Optional[str] = None, split: str = "val", stride: Optional[int] = None,
               max_tokens: Optional[int] = None, text_column: Optional[str] = None) -> dict:
    """Token-level perplexity of `loaded` (a LoadedModel) on `source` (default: its own training data).

    Windows of the model's context slide by `stride` (default: half a context); each token is scored
    once, with up to context-stride tokens of history, as in the usual strided evaluation.
    """
    from slm_core.data import prepare_data

    config = loaded.config
    if source:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, source=source,
                                                                      text_column=text_column))
    context = _context(loaded.model)
    data = prepare_data(config, tokenizer=loaded.tokenizer, progress=False, require_windows=False)
    stride = stride or max(1, context // 2)
    total_nll, total_tokens, started = 0.0, 0, time.perf_counter()
    device = next(loaded.model.parameters()).device
    for x, y in data.iter_eval_windows(split, context, stride):
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
            "loss": loss, "ppl": math.exp(min(loss, 50.0)), "seconds": time.perf_counter() - started}


def _context(model: torch.nn.Module) -> int:
    from slm_core.lora import base_transformer

    return base_transformer(model).config.context_length


def add_eval_parser(sub) -> None:
    parser = sub.add_parser("eval", help="perplexity of one or more models on a data source")
    parser.add_argument("models", nargs="+", help="run names, checkpoint, quantized or Hugging Face folders")
    parser.add_argument("--data", default=None, help="data source (default: each model's own validation data)")
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--stride", type=int, default=None, help="window stride in tokens (default: context/2)")
    parser.add_argument("--max-tokens", type=int, default=None, help="stop after scoring this many tokens")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    parser.add_argument("--runs-dir", default=None)


def cmd_eval(args) -> int:
    from slm_core.checkpoint import load_model
    from slm_core.runs import use_runs_dir

    use_runs_dir(args.runs_dir)
    print(f"{'model':<48}{'tokens':>10}{'loss':>9}{'ppl':>10}{'sec':>8}")
    for source in args.models:
        loaded = load_model(source, tag=args.checkpoint)
        row = perplexity(loaded, args.data, args.split, args.stride, args.max_tokens, args.text_column)
        print(f"{source[-47:]:<48}{row['tokens']:>10,}{row['loss']:>9.4f}{row['ppl']:>10.3f}{row['seconds']:>8.1f}")
    return 0

"""Benchmark tasks through lm-evaluation-harness: `HarnessModel` lets it score any model we load, in this
process, with its own tokenizer; tasks are harness names, shipped tasks or a user's JSONL."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from slm_core.errors import SLMError
from slm_core.infer.generate import complete
from slm_core.models.model import base_transformer
from slm_core.models.templates import format_prompt
from slm_core.post.tasks import SHIPPED_TASKS, task_configs

INSTALL_HINT = "benchmark tasks need lm-evaluation-harness: pip install 'slm-studio[eval]' (or pip install lm-eval)"


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError as error:
        raise SLMError(INSTALL_HINT) from error
    return LM


def harness_model(loaded, batch_size: int = 16, on_request: Optional[Callable[[int, int], None]] = None):
    """An lm_eval `LM` over `loaded` (a LoadedModel). `on_request(done, total)` reports progress."""
    LM = _lm_base()

    class HarnessModel(LM):
        def __init__(self):
            super().__init__()
            self.loaded, self.batch_size, self.on_request = loaded, batch_size, on_request
            self.core = _core(loaded.model)
            self.context = self.core.config.context_length

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(loaded.tokenizer, "name", "slm"))

        def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
            return format_prompt(chat_history, loaded.template)

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            pairs = [_encode_pair(loaded.tokenizer, *r.args) for r in requests]
            return _score_pairs(loaded.model, pairs, self.context, self.batch_size, self._progress(len(pairs)))

        def loglikelihood_rolling(self, requests) -> list[float]:
            progress = self._progress(len(requests))
            results = []
            for i, request in enumerate(requests):
                tokens = [loaded.tokenizer.eot_id] + loaded.tokenizer.encode(request.args[0])
                results.append(_rolling_logprob(loaded.model, tokens, self.context))
                progress(i + 1)
            return results

        def generate_until(self, requests) -> list[str]:
            progress = self._progress(len(requests))
            results = []
            for i, request in enumerate(requests):
                context, kwargs = request.args
                results.append(_generate_until(loaded, context, dict(kwargs or {})))
                progress(i + 1)
            return results

        def _progress(self, total: int) -> Callable[[int], None]:
            report = self.on_request or (lambda done, of: None)
            return lambda done: report(done, total)

    return HarnessModel()


def _core(model: torch.nn.Module) -> torch.nn.Module:
    return base_transformer(model)


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids). Trailing spaces move from the context to the continuation, as
    the harness's own models do, so " Paris" is scored as one word-initial token, not " " + "Paris"."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.encode(context) if context else [tokenizer.eot_id]
    return context_ids, tokenizer.encode(continuation)


@torch.inference_mode()
def _score_pairs(model, pairs: list[tuple[list[int], list[int]]], context: int, batch_size: int,
                 progress: Callable[[int], None]) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) and whether greedy decoding would produce it, per pair.
    Sequences are cut to the model's context from the left and right-padded into batches; padding
    after a sequence cannot change its causal logits."""
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    results: list[Optional[tuple[float, bool]]] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        rows = [(pairs[i][0] + pairs[i][1])[-(context + 1):] for i in batch]
        width = max(len(r) - 1 for r in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        for j, row in enumerate(rows):
            x[j, :len(row) - 1] = torch.tensor(row[:-1])
        logprobs = F.log_softmax(model(x.to(device)).float(), dim=-1)  # (B, T, V)
        for j, i in enumerate(batch):
            # A continuation longer than the context is scored on its last `context` tokens only.
            row, n = rows[j], min(len(pairs[i][1]), len(rows[j]) - 1)
            positions = torch.arange(len(row) - 1 - n, len(row) - 1)
            target = torch.tensor(row[-n:], device=device)
            picked = logprobs[j, positions.to(device)]
            results[i] = (float(picked.gather(-1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all()))
        progress(min(start + batch_size, len(order)))
    return results  # type: ignore[return-value]


@torch.inference_mode()
def _rolling_logprob(model, tokens: list[int], context: int) -> float:
    """log p(tokens[1:]) in disjoint windows of the model's context, each token scored once."""
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(tokens) - 1, context):
        chunk = torch.tensor(tokens[start:start + context + 1], device=device)
        logprobs = F.log_softmax(model(chunk[None, :-1]).float()[0], dim=-1)
        total += float(logprobs.gather(-1, chunk[1:, None]).sum())
    return total


def _generate_until(loaded, context: str, kwargs: dict) -> str:
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    sampling = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0) or 0) > 0
    text = complete(loaded, context, max_new_tokens=int(kwargs.get("max_gen_toks", 128)),
                    temperature=float(kwargs.get("temperature", 1.0)) if sampling else 0.0,
                    top_k=0, top_p=1.0, seed=1234, use_template=False, stop=[u for u in until if u])
    return text


def run_tasks(loaded, tasks: Iterable[str], limit: Optional[int] = None, num_fewshot: Optional[int] = None,
              seed: int = 1234, on_progress: Optional[Callable[[str], None]] = None) -> dict:
    """Score `loaded` on `tasks` (shipped names, harness names or JSONL paths).

    Returns {"tasks": {name: {metric: value, metric_stderr: value, "samples": n}}, "seconds": s, ...}.
    """
    _lm_base()
    import lm_eval
    from lm_eval.tasks import TaskManager

    configs, harness_names = task_configs(list(tasks))
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines bury our progress
    manager = TaskManager(include_defaults=bool(harness_names))
    unknown = [n for n in harness_names if n not in manager.all_tasks]
    if unknown:
        raise SLMError(f"unknown task {unknown[0]!r}: use a shipped task ({', '.join(_shipped())}), "
                       "a JSONL file of your own, or a name from `lm-eval --tasks list`")
    say = on_progress or (lambda text: None)
    model = harness_model(loaded, on_request=lambda done, total: say(f"scored {done}/{total} requests"))
    started = time.perf_counter()
    try:
        output = lm_eval.simple_evaluate(
            model=model, tasks=configs + harness_names, num_fewshot=num_fewshot, limit=limit,
            task_manager=manager, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, bootstrap_iters=0, log_samples=False,
            apply_chat_template=bool(loaded.template))
    except (ConnectionError, OSError) as error:
        raise SLMError(f"a task's data could not be loaded ({error}); harness tasks download from the Hub: "
                       "use a shipped task or a JSONL file of your own offline") from error
    return {"tasks": _scores(output), "seconds": time.perf_counter() - started, "limit": limit, "seed": seed,
            "num_fewshot": num_fewshot}


def _shipped() -> list[str]:
    return list(SHIPPED_TASKS)


def _scores(output: dict) -> dict:
    """The harness's results, keeping numbers only: {"acc,none": 0.5, …} → {"acc": 0.5, …}."""
    scores = {}
    for task, metrics in (output or {}).get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "sample_len":
                row[key.split(",")[0]] = float(value)
        samples = (output.get("n-samples") or {}).get(task, {})
        row["samples"] = int(samples.get("effective", samples.get("original", 0)) or 0)
        scores[task] = row
    return scores

"""GRPO's reward functions, computed by a program from each completion (slm_core.train.grpo).

Built in, by name in `grpo.rewards`:
  last_number  1 when the completion's last number equals the reference ("3 plus 4 is 7." for 7): the shipped
               `arithmetic` task's checker (slm_core.data.arithmetic), GSM8K-style answers too
  exact_match  1 when the completion, stripped and case-folded, equals the reference
  format       1 when the completion matches `grpo.format_regex` (re.search) and/or is JSON valid under
               `grpo.format_schema`
  length       0 up to `grpo.length_target` completion tokens, then -(extra tokens / target)

A reward of your own: `grpo.custom_reward=module:function` with `custom` in the list (or `module:function`
itself in the list). The module is imported in the training process from the folder you start from or
PYTHONPATH, never fetched. It is called once per step with every completion of the step:

    def my_reward(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]:
        return [1.0 if "because" in c else 0.0 for c in completions]

Each reward's mean is logged per step as `reward/<name>` (a custom one under its function's name)."""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

from slm_core.config import GRPOConfig
from slm_core.data.arithmetic import last_number_equals
from slm_core.errors import SLMError


@dataclass
class Batch:
    """What every reward sees for one step: N completions, each with its prompt, reference and token count."""
    prompts: list[str]
    completions: list[str]
    references: list[Optional[str]]
    lengths: list[int]


@dataclass
class Reward:
    name: str
    weight: float
    score: Callable[[Batch], list[float]]


def last_number(batch: Batch) -> list[float]:
    return [float(ref is not None and last_number_equals(c, ref)) for c, ref in zip(batch.completions, batch.references)]


def exact_match(batch: Batch) -> list[float]:
    return [float(ref is not None and c.strip().casefold() == str(ref).strip().casefold())
            for c, ref in zip(batch.completions, batch.references)]


def format_reward(pattern: Optional[str], schema_text: Optional[str]) -> Callable[[Batch], list[float]]:
    regex = re.compile(pattern) if pattern else None
    validator = None
    if schema_text:
        import jsonschema  # only for a JSON-schema format check

        try:
            validator = jsonschema.Draft202012Validator(json.loads(schema_text))
        except jsonschema.SchemaError as error:
            raise SLMError(f"grpo.format_schema is not a valid JSON schema ({error.message}): fix it") from None

    def score(batch: Batch) -> list[float]:
        out = []
        for text in batch.completions:
            ok = regex is None or regex.search(text) is not None
            if ok and validator is not None:
                try:
                    ok = validator.is_valid(json.loads(text.strip()))
                except json.JSONDecodeError:
                    ok = False
            out.append(float(ok))
        return out

    return score


def length_penalty(target: int) -> Callable[[Batch], list[float]]:
    def score(batch: Batch) -> list[float]:
        return [-max(0, n - target) / target for n in batch.lengths]

    return score


def import_reward(spec: str, field: str = "grpo.custom_reward") -> tuple[str, Callable]:
    """`module:function` → (function name, the function), imported here; SLMError in one line otherwise."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise SLMError(f"{field}={spec!r}: module '{error.name}' not found; put {module_name.split('.')[0]}.py in the "
                       "folder you start from or on PYTHONPATH") from None
    except Exception as error:  # noqa: BLE001 - the user's module failed while importing: say so in one line
        raise SLMError(f"{field}={spec!r}: importing {module_name} failed ({type(error).__name__}: {error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise SLMError(f"{field}={spec!r}: {module_name} has no function {function_name!r}")
    return function_name, function


def _custom(spec: str, field: str) -> tuple[str, Callable[[Batch], list[float]]]:
    name, function = import_reward(spec, field)

    def score(batch: Batch) -> list[float]:
        try:
            values = function(list(batch.prompts), list(batch.completions), list(batch.references))
        except Exception as error:  # noqa: BLE001 - the user's code: one line naming it, not a traceback
            raise SLMError(f"the reward {spec} raised {type(error).__name__}: {error}") from None
        return _as_scores(values, len(batch.completions), spec)

    return name, score


def _as_scores(values, n: int, spec: str) -> list[float]:
    try:
        scores = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SLMError(f"the reward {spec} must return a list of {n} numbers, got {type(values).__name__}") from None
    if len(scores) != n:
        raise SLMError(f"the reward {spec} returned {len(scores)} scores for {n} completions: return one each")
    if not all(math.isfinite(s) for s in scores):
        raise SLMError(f"the reward {spec} returned a score that is not a finite number")
    return scores


def build_rewards(cfg: GRPOConfig) -> list[Reward]:
    """The rewards `grpo.rewards` names, with their weights; a custom one is imported now (a bad one fails
    before any model is loaded)."""
    weights = cfg.reward_weights or [1.0] * len(cfg.rewards)
    rewards = []
    for name, weight in zip(cfg.rewards, weights):
        if name == "last_number":
            rewards.append(Reward(name, float(weight), last_number))
        elif name == "exact_match":
            rewards.append(Reward(name, float(weight), exact_match))
        elif name == "format":
            rewards.append(Reward(name, float(weight), format_reward(cfg.format_regex, cfg.format_schema)))
        elif name == "length":
            rewards.append(Reward(name, float(weight), length_penalty(cfg.length_target)))
        else:  # "custom" (grpo.custom_reward) or module:function given in the list itself
            spec, field = (cfg.custom_reward, "grpo.custom_reward") if name == "custom" else (name, "grpo.rewards")
            label, score = _custom(spec, field)
            rewards.append(Reward(label, float(weight), score))
    return rewards


def score_all(rewards: list[Reward], batch: Batch) -> tuple[list[float], dict[str, list[float]]]:
    """(the weighted total per completion, each reward's scores by name)."""
    each = {}
    for reward in rewards:
        each[reward.name] = _as_scores(reward.score(batch), len(batch.completions), reward.name)
    totals = [sum(r.weight * each[r.name][i] for r in rewards) for i in range(len(batch.completions))]
    return totals, each

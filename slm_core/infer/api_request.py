"""An OpenAI-style request checked and turned into a `Plan` for the server (slm_core.infer.serve): its prompts as
ids, one SamplingParams per choice, echo and log-probabilities. A parameter this server does not honour is a 400
naming it, never ignored; torch-free."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from slm_core.errors import SLMError
from slm_core.infer.sampling import SamplingParams

MAX_CHOICES = 128  # prompts x n in one request; each is a request of the engine
MAX_LOGPROBS = 20  # alternatives per token, as vLLM allows by default (OpenAI: 5 for completions, 20 for chat)

# Accepted as they are: what the server honours, plus fields that change nothing in a local answer.
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "user",
          "top_k", "repetition_penalty"}  # the last two are vLLM's extras
COMPLETION = COMMON | {"prompt", "echo", "logprobs", "best_of"}  # best_of: n only (check_supported)
CHAT = COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "metadata", "store"}
# Accepted only at the value that means "off": anything else would need behaviour this server does not have.
OFF_VALUES: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": lambda v: v == 0, "presence_penalty": lambda v: v == 0,
    "logit_bias": lambda v: not v, "suffix": lambda v: v == "", "tools": lambda v: not v,
    "functions": lambda v: not v, "tool_choice": lambda v: v == "none", "function_call": lambda v: v == "none",
    "parallel_tool_calls": lambda v: True,  # meaningless without tools, which are refused
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
    "modalities": lambda v: v == ["text"], "service_tier": lambda v: v in ("auto", "default"),
}
SUPPORTED = "model, prompt/messages, max_tokens, temperature, top_p, top_k, repetition_penalty, n, stop, seed, " \
            "stream, stream_options, echo and logprobs (completions), logprobs and top_logprobs (chat), user"


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Plan:
    """What to answer: `choices[i]` is (index of its prompt, its sampling), in the order of the reply's choices
    (prompt by prompt, n each, as OpenAI numbers them)."""
    prompts: list[list[int]]
    choices: list[tuple[int, SamplingParams]]
    echo: bool = False
    logprobs: Optional[int] = None  # alternatives to list per token; None: no log-probabilities at all
    include_usage: bool = False


def field(body: dict, name: str, kinds, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise APIError(400, f"'{name}' must be a number, got {value!r}", param=name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' has the wrong type: {value!r}", param=name)
    return value


def check_supported(body: dict, chat: bool) -> None:
    """Every field is one this server honours (or one at its 'off' value); else a 400 naming it."""
    known = CHAT if chat else COMPLETION
    for name, value in body.items():
        if value is None or name in known:
            continue
        if name in OFF_VALUES:
            if OFF_VALUES[name](value):
                continue
            raise APIError(400, f"'{name}'={json_short(value)} is not supported by this server (supported: "
                                f"{SUPPORTED})", param=name)
        raise APIError(400, f"Unrecognized request argument supplied: {name} (supported: {SUPPORTED})", param=name)
    best_of = field(body, "best_of", int, None)
    if best_of is not None and best_of != field(body, "n", int, 1):
        raise APIError(400, "'best_of' other than n is not supported: ask for n choices and pick", param="best_of")


def json_short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def completion_prompts(prompt: Any, encode: Callable[[str], list[int]], vocab_size: int) -> list[list[int]]:
    """`prompt` as OpenAI takes it (a string, a list of strings, a list of token ids, a list of such lists) →
    one list of ids per prompt."""
    def ids_of(item: Any, where: str) -> list[int]:
        if isinstance(item, str):
            ids = encode(item) if item else []
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            bad = next((t for t in item if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} in {where} is outside the vocabulary (0..{vocab_size - 1})",
                               param="prompt")
            ids = list(item)
        else:
            raise APIError(400, f"{where} must be a string or a list of token ids", param="prompt")
        if not ids:
            raise APIError(400, f"{where} is empty (after tokenization)", param="prompt")
        return ids

    if isinstance(prompt, str):
        return [ids_of(prompt, "'prompt'")]
    if not isinstance(prompt, list) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string, list of strings, list of token ids or list of "
                            "token-id lists", param="prompt")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [ids_of(prompt, "'prompt'")]
    return [ids_of(item, f"prompt[{i}]") for i, item in enumerate(prompt)]


def sampling_from(body: dict, prompt_len: int, context: int, default_max: Optional[int]) -> SamplingParams:
    """OpenAI fields (plus vLLM's top_k and repetition_penalty) → SamplingParams, checked."""
    max_tokens = field(body, "max_completion_tokens", int, None)
    max_tokens = field(body, "max_tokens", int, max_tokens)
    room = context - prompt_len
    if room < 0 or (room == 0 and max_tokens != 0):  # a prompt that fills the context can still be scored
        raise APIError(400, f"This model's maximum context length is {context} tokens; your prompt has "
                            f"{prompt_len}. Shorten the prompt.", param="messages", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = room if default_max is None else min(default_max, room)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    top_k = field(body, "top_k", int, 0)
    try:  # SamplingParams refuses out-of-range knobs (slm_core.validate); say it in the API's words
        params = SamplingParams(max_new_tokens=max_tokens,
                                temperature=float(field(body, "temperature", (int, float), 1.0)),
                                top_k=0 if top_k == -1 else top_k,  # vLLM's -1 means off
                                top_p=float(field(body, "top_p", (int, float), 1.0)),
                                repetition_penalty=float(field(body, "repetition_penalty", (int, float), 1.0)),
                                seed=field(body, "seed", int, None), stop=tuple(stop))
    except SLMError as error:
        message = str(error).replace("max_new_tokens", "max_tokens")
        raise APIError(400, message, param=message.split("=")[0] if "=" in message else None) from None
    if prompt_len + max_tokens > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                            "completion). Reduce the prompt or max_tokens.", param="max_tokens",
                       code="context_length_exceeded")
    return params


def logprobs_wanted(body: dict, chat: bool) -> Optional[int]:
    """How many alternatives per token the reply lists, or None for no log-probabilities."""
    if chat:
        wanted = field(body, "logprobs", bool, False)
        top = field(body, "top_logprobs", int, None)
        if top is not None and not wanted:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise APIError(400, f"'top_logprobs' must be 0..{MAX_LOGPROBS}", param="top_logprobs")
        return (top or 0) if wanted else None
    count = field(body, "logprobs", int, None)
    if count is not None and not 0 <= count <= MAX_LOGPROBS:
        raise APIError(400, f"'logprobs' must be 0..{MAX_LOGPROBS}", param="logprobs")
    return count


def make_plan(body: dict, chat: bool, prompts: list[list[int]], context: int) -> Plan:
    """The checked plan for `body` whose prompts are already ids."""
    n = field(body, "n", int, 1)
    if n < 1 or n * len(prompts) > MAX_CHOICES:
        raise APIError(400, f"'n' must be 1 or more, with n x prompts at most {MAX_CHOICES}", param="n")
    echo = bool(field(body, "echo", bool, False))
    choices = []
    for i, ids in enumerate(prompts):
        params = sampling_from(body, len(ids), context, None if chat else 16)
        seeds = [params.seed + j for j in range(n)] if params.seed is not None else \
            [random.SystemRandom().randrange(2**31) for _ in range(n)] if n > 1 else [None]
        choices += [(i, replace(params, seed=seed)) for seed in seeds]
    include_usage = bool((field(body, "stream_options", dict, {}) or {}).get("include_usage"))
    return Plan(prompts, choices, echo, logprobs_wanted(body, chat), include_usage)

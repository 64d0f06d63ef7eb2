"""LLM-as-judge through any OpenAI-compatible chat endpoint: rubric scores per reply, and pairwise wins
counted only when both orders agree. A failed judgement leaves its item unscored."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from slm_core.allowlist import readable
from slm_core.data.corpus import builtin_instructions
from slm_core.errors import SLMError
from slm_core.infer.generate import complete

RUBRIC = {
    "helpfulness": "Does the reply address what was asked and give the user what they need?",
    "correctness": "Is what the reply states true and consistent with the prompt (and the reference, if given)?",
    "fluency": "Is the reply grammatical, coherent English that reads naturally?",
}
SCORE = re.compile(r"score\s*(?:\(1-10\))?\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
VERDICT = re.compile(r"(?:verdict|winner|better)\s*[:=]\s*\**\s*\[?\s*(A|B|tie)\b", re.IGNORECASE)


@dataclass
class Endpoint:
    """An OpenAI-compatible chat endpoint: base_url ends before /chat/completions (…/v1)."""
    base_url: str
    model: str = ""
    api_key: Optional[str] = None
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 256  # room for a score and a short reason

    def public(self) -> dict:
        """What is saved with the scores: everything but the key."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}


@dataclass
class JudgeReply:
    text: Optional[str]
    error: Optional[str] = None
    seconds: float = 0.0


@dataclass
class Judgement:
    prompt: str
    reply: str
    scores: dict = field(default_factory=dict)  # criterion → int score or None (unscored)
    reasons: dict = field(default_factory=dict)  # criterion → the judge's reason or the failure
    raw: dict = field(default_factory=dict)  # criterion → the judge's whole reply (None on failure)


def _client(endpoint: Endpoint):
    import httpx

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx.Client(base_url=endpoint.base_url.rstrip("/"), headers=headers, timeout=endpoint.timeout_s)


def check_endpoint(endpoint: Endpoint) -> str:
    """The model name to ask for. Fails in seconds, naming the URL, when nothing answers there."""
    import httpx

    if not re.match(r"^https?://", endpoint.base_url or ""):
        raise SLMError(f"judge URL {endpoint.base_url!r} must start with http:// or https:// "
                       "(e.g. http://127.0.0.1:8000/v1 for `slm serve`)")
    try:
        with _client(Endpoint(endpoint.base_url, api_key=endpoint.api_key, timeout_s=5.0)) as client:
            response = client.get("/models")
    except httpx.HTTPError as error:
        raise SLMError(f"no judge answers at {endpoint.base_url} ({type(error).__name__}): start one "
                       "(`slm serve MODEL`, Ollama, llama.cpp's server) or fix --judge") from error
    if response.status_code in (401, 403):
        raise SLMError(f"the judge at {endpoint.base_url} refused the API key (HTTP {response.status_code}): "
                       "pass the right one with --judge-key or $OPENAI_API_KEY")
    if endpoint.model:
        return endpoint.model
    try:
        return response.json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise SLMError(f"the judge at {endpoint.base_url} lists no model: name one with --judge-model") from error


def ask(client, endpoint: Endpoint, messages: list[dict], seed: int) -> JudgeReply:
    """One chat completion; any failure becomes an error string, never an exception."""
    import httpx

    started = time.perf_counter()
    body = {"model": endpoint.model, "messages": messages, "temperature": endpoint.temperature,
            "seed": seed, "max_tokens": endpoint.max_tokens}
    try:
        response = client.post("/chat/completions", json=body)
        if response.status_code != 200:
            return JudgeReply(None, f"HTTP {response.status_code}: {response.text[:200]}", time.perf_counter() - started)
        text = response.json()["choices"][0]["message"]["content"]
    except httpx.TimeoutException:
        return JudgeReply(None, f"timed out after {endpoint.timeout_s:g} s", time.perf_counter() - started)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
        return JudgeReply(None, f"{type(error).__name__}: {error}"[:200], time.perf_counter() - started)
    return JudgeReply(text or "", None, time.perf_counter() - started)


def parse_score(text: Optional[str]) -> Optional[int]:
    """'Score: 7' (or 'score = 7/10', '**Score:** 7') → 7; anything else → None (unscored)."""
    match = SCORE.search(text or "")
    if not match:
        return None
    value = round(float(match.group(1)))
    return value if 1 <= value <= 10 else None


def parse_verdict(text: Optional[str]) -> Optional[str]:
    """'Verdict: A' / 'Winner: B' / 'Verdict: tie' → "A" | "B" | "tie"; else None."""
    match = VERDICT.search(text or "")
    return None if not match else ("tie" if match.group(1).lower() == "tie" else match.group(1).upper())


def single_prompt(prompt: str, reply: str, criterion: str, description: str, reference: Optional[str]) -> list[dict]:
    ref = f"\n\n[Reference answer]\n{reference}" if reference else ""
    return [{"role": "system", "content": "You are a strict, fair judge of AI assistant replies."},
            {"role": "user", "content": (
                f"Rate the assistant's reply for {criterion}: {description}\n\n[User prompt]\n{prompt}{ref}\n\n"
                f"[Assistant reply]\n{reply}\n\nAnswer with one line 'Score: N' where N is an integer from 1 "
                "(worst) to 10 (best), then one line 'Reason: ...'.")}]


def pairwise_prompt(prompt: str, first: str, second: str) -> list[dict]:
    return [{"role": "system", "content": "You are a strict, fair judge of AI assistant replies."},
            {"role": "user", "content": (
                f"[User prompt]\n{prompt}\n\n[Reply A]\n{first}\n\n[Reply B]\n{second}\n\nWhich reply is better "
                "overall (helpful, correct, fluent)? Answer with one line 'Verdict: A', 'Verdict: B' or "
                "'Verdict: tie', then one line 'Reason: ...'.")}]


def _reason(reply: JudgeReply) -> str:
    if reply.error:
        return reply.error
    match = re.search(r"reason\s*[:=]\s*(.+)", reply.text or "", re.IGNORECASE | re.DOTALL)
    return (match.group(1) if match else reply.text or "").strip()[:500]


def judge_replies(endpoint: Endpoint, items: list[dict], rubric: Optional[dict] = None, seed: int = 0,
                  on_progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Score `items` ({"prompt", "reply", "reference"?}) on every rubric criterion.

    Returns {"judgements": [...], "means": {criterion: mean or None}, "unscored": n, "endpoint": …,
    "rubric": …, "seed": seed}."""
    rubric = rubric or RUBRIC
    endpoint.model = check_endpoint(endpoint)
    judgements, total = [], len(items) * len(rubric)
    with _client(endpoint) as client:
        for item in items:
            judgement = Judgement(item["prompt"], item["reply"])
            for criterion, description in rubric.items():
                reply = ask(client, endpoint, single_prompt(item["prompt"], item["reply"], criterion, description,
                                                            item.get("reference")), seed)
                judgement.scores[criterion] = parse_score(reply.text)
                judgement.raw[criterion] = reply.text
                judgement.reasons[criterion] = _reason(reply) if judgement.scores[criterion] is not None or reply.error \
                    else f"no score in the judge's reply: {(reply.text or '')[:200]!r}"
                if on_progress:
                    on_progress(sum(len(j.scores) for j in judgements) + len(judgement.scores), total)
            judgements.append(judgement)
    return {"judgements": [asdict(j) for j in judgements], "means": _means(judgements, rubric),
            "unscored": sum(s is None for j in judgements for s in j.scores.values()),
            "endpoint": endpoint.public(), "rubric": rubric, "seed": seed}


def _means(judgements: list[Judgement], rubric: dict) -> dict:
    means = {}
    for criterion in rubric:
        values = [j.scores[criterion] for j in judgements if j.scores.get(criterion) is not None]
        means[criterion] = statistics.fmean(values) if values else None
    return means


def judge_pairwise(endpoint: Endpoint, items: list[dict], seed: int = 0,
                   on_progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """`items`: {"prompt", "a", "b"}. Each is judged as (A, B) and as (B, A); a model wins an item
    only when both orders pick it. Returns per-item verdicts and the totals."""
    endpoint.model = check_endpoint(endpoint)
    rows, counts = [], {"A": 0, "B": 0, "tie": 0, "unscored": 0}
    with _client(endpoint) as client:
        for i, item in enumerate(items):
            forward = ask(client, endpoint, pairwise_prompt(item["prompt"], item["a"], item["b"]), seed)
            swapped = ask(client, endpoint, pairwise_prompt(item["prompt"], item["b"], item["a"]), seed)
            first, second = parse_verdict(forward.text), parse_verdict(swapped.text)
            verdict = combine_orders(first, second)
            counts[verdict] += 1
            rows.append({"prompt": item["prompt"], "verdict": verdict, "orders": [first, second],
                         "reasons": [_reason(forward), _reason(swapped)], "raw": [forward.text, swapped.text]})
            if on_progress:
                on_progress(i + 1, len(items))
    return {"items": rows, "counts": counts, "endpoint": endpoint.public(), "seed": seed}


def combine_orders(forward: Optional[str], swapped: Optional[str]) -> str:
    """The verdict of a pair judged as (A, B) and then as (B, A): `swapped` names positions of the
    second showing, so its "A" is model B. A model wins only when both showings pick it."""
    if forward is None or swapped is None:
        return "unscored"
    swapped = {"A": "B", "B": "A"}.get(swapped, swapped)  # back to the original labels
    return forward if forward == swapped else "tie"


def agreement(first: dict, second: dict) -> dict:
    """How two judge runs over the same items agree: exact, within one point, and Spearman's rho
    over the scores both runs gave."""
    pairs = []
    for a, b in zip(first["judgements"], second["judgements"]):
        for criterion, score in a["scores"].items():
            other = b["scores"].get(criterion)
            if score is not None and other is not None:
                pairs.append((score, other))
    if not pairs:
        return {"pairs": 0, "exact": None, "within_1": None, "spearman": None}
    exact = sum(a == b for a, b in pairs) / len(pairs)
    within = sum(abs(a - b) <= 1 for a, b in pairs) / len(pairs)
    return {"pairs": len(pairs), "exact": exact, "within_1": within, "spearman": _spearman(pairs)}


def _spearman(pairs: list[tuple[int, int]]) -> Optional[float]:
    if len(pairs) < 2:
        return None
    try:
        return statistics.correlation(*map(_ranks, zip(*pairs)))
    except statistics.StatisticsError:  # one run gave every item the same score
        return None


def _ranks(values) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


# ---- the prompts a model answers ----------------------------------------------------------------

def load_prompts(source: Optional[str] = None, limit: int = 20) -> list[dict]:
    """{"prompt", "reference"?} items: 'builtin' (default) is a held-out slice of the built-in
    instruction set (a seed no training run uses); else a JSONL with `prompt` (or
    `instruction` [+ `input`]) and optionally `reference` (or `output`)."""
    if limit <= 0:
        raise SLMError(f"the number of judge prompts must be positive, got {limit}")
    if not source or source == "builtin":
        return [{"prompt": _instruction_text(r), "reference": r["output"]}
                for r in builtin_instructions(seed=90_001, n=limit)]
    return _prompts_from_file(source, limit)


def _instruction_text(record: dict) -> str:
    extra = record.get("input") or ""
    return f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]


def _prompts_from_file(source: str, limit: int) -> list[dict]:
    path = readable(Path(source).expanduser())
    if not path.is_file():
        raise SLMError(f"judge prompt file {source} not found: give a JSONL file with a 'prompt' per line, or 'builtin'")
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SLMError(f"{path}, line {number}: not JSON ({error.msg}); fix or remove that line") from error
            if not isinstance(record, dict) or not (record.get("prompt") or record.get("instruction")):
                raise SLMError(f"{path}, line {number}: needs a 'prompt' (or 'instruction') field")
            prompt = record.get("prompt") or _instruction_text(record)
            items.append({"prompt": str(prompt), "reference": record.get("reference", record.get("output"))})
            if len(items) >= limit:
                break
    if not items:
        raise SLMError(f"judge prompt file {path} has no prompts")
    return items


def model_replies(loaded, items: list[dict], max_new_tokens: int = 128, temperature: float = 0.7, seed: int = 0,
                  on_progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Each item with the model's reply added (its own chat template, a fixed seed per item)."""
    out = []
    for i, item in enumerate(items):
        reply = complete(loaded, item["prompt"], max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=50, top_p=0.95, seed=seed + i)
        out.append(dict(item, reply=reply.strip()))
        if on_progress:
            on_progress(i + 1, len(items))
    return out

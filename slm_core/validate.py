"""Checks of what a person passes in (generation and evaluation arguments, the runs directory, a run's
sources), made where it enters, each failing as a one-line SLMError. No torch at module level."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core.errors import SLMError

CHECKPOINT_TAGS = ("best", "latest")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
JSON_DOCUMENT_LIMIT = 64 << 20  # a .json file smaller than this is also tried as one document


def _number(name: str, value: Any, integer: bool = False) -> float:
    """A finite real number (a whole one if `integer`; 50.0 from a UI number box counts as 50)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and not float(value).is_integer()):
        raise SLMError(f"{name}={value!r} is invalid: give a{'n integer' if integer else ' finite number'}")
    return value


def validate_sampling(max_new_tokens: Any = 0, temperature: Any = 0.0, top_k: Any = 0, top_p: Any = 1.0,
                      repetition_penalty: Any = 1.0) -> None:
    """Generation arguments: refused when out of range, never clamped or silently replaced."""
    if _number("max_new_tokens", max_new_tokens, integer=True) < 0:
        raise SLMError(f"max_new_tokens={max_new_tokens} is invalid: give 0 or more tokens to generate")
    if _number("temperature", temperature) < 0:
        raise SLMError(f"temperature={temperature} is invalid: use 0 for greedy decoding or a positive value "
                       "(0.7-1.0 is usual)")
    if _number("top_k", top_k, integer=True) < 0:
        raise SLMError(f"top_k={top_k} is invalid: use 0 to keep every token, or a positive count such as 50")
    if not 0 < _number("top_p", top_p) <= 1:
        raise SLMError(f"top_p={top_p} is invalid: it must be in (0, 1]; use 1.0 to turn nucleus sampling off")
    if _number("repetition_penalty", repetition_penalty) <= 0:
        raise SLMError(f"repetition_penalty={repetition_penalty} is invalid: it must be positive; "
                       "1.0 means no penalty, 1.1-1.3 discourages repeats")


def validate_eval(stride: Optional[int] = None, max_tokens: Optional[int] = None,
                  context: Optional[int] = None) -> None:
    """Perplexity arguments: a stride in [1, context] and a positive token budget (None = defaults)."""
    if stride is not None:
        _number("stride", stride, integer=True)
        if stride < 1 or (context is not None and stride > context):
            upper = f" and at most the model's context ({context})" if context is not None else ""
            raise SLMError(f"stride={stride} is invalid: windows must move by at least 1 token{upper}; "
                           "leave it unset for half a context")
    if max_tokens is not None and _number("max_tokens", max_tokens, integer=True) < 1:
        raise SLMError(f"max_tokens={max_tokens} is invalid: give a positive number of tokens, or leave it unset")


def check_tag(tag: str) -> str:
    if tag not in CHECKPOINT_TAGS:
        raise SLMError(f"checkpoint tag {tag!r} is unknown: use 'best' or 'latest'")
    return tag


def check_device(device: Any, allow_auto: bool = False) -> None:
    """'cpu', 'cuda', 'cuda:N', 'mps' (or 'auto' where allowed), and only if this machine has it."""
    text = str(device)
    if not DEVICE_PATTERN.fullmatch(text) or (text == "auto" and not allow_auto):
        raise SLMError(f"device {text!r} is unknown: use cpu, cuda, cuda:N or mps")
    if text.startswith("cuda") or text == "mps":
        import torch

        if text == "mps" and not torch.backends.mps.is_available():
            raise SLMError("device 'mps' is not available on this machine: use cpu")
        if text.startswith("cuda"):
            count = torch.cuda.device_count()
            index = int(text.partition(":")[2] or 0)
            if index >= count:
                have = f"only {count} GPU(s)" if count else "no CUDA GPU"
                raise SLMError(f"device {text!r} is not available: this machine has {have}; use cpu")


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger for a moment: some log a failure with its traceback before raising,
    and the person should see only our one-line SLMError about it."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def explain_json_error(path: str | Path) -> Optional[str]:
    """Why a JSON / JSON Lines file does not parse, with the line number (None if it parses).

    The datasets library reports the byte position inside a parse block ("Trailing data at
    position 54") or a bare StopIteration for an empty file; a person needs the file and the line.
    Read line by line, so a large file costs no more memory than its longest line."""
    path = Path(path)
    if path.suffix.lower() == ".json" and path.stat().st_size < JSON_DOCUMENT_LIMIT:
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as error:
            if text.lstrip()[:1] == "[":  # one JSON document: report its own line
                return (f"could not read {path}: line {error.lineno}: {error.msg} (column {error.colno}); "
                        "fix the JSON there")
    seen_any = False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            seen_any = True
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return (f"could not read {path}: line {number}: {error.msg} (column {error.colno}); each line must "
                        "be one JSON object: fix or remove that line")
            if not isinstance(value, dict):
                return (f"could not read {path}: line {number} holds a {type(value).__name__}, not a JSON object like "
                        f"{{\"text\": \"...\"}}: fix or remove that line")
    if not seen_any:
        return f"could not read {path}: the file is empty; give one JSON object per line, e.g. {{\"text\": \"...\"}}"
    return None

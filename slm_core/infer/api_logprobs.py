"""Log-probabilities in OpenAI's shapes: a completion choice's `logprobs` (tokens, token_logprobs, top_logprobs,
text_offset; with echo the prompt's tokens come first and the very first has no log-probability) and a chat
choice's `logprobs.content`. Torch-free: the numbers come from slm_core.infer.scoring."""

from __future__ import annotations

from typing import Callable, Optional


def token_text(piece: bytes) -> str:
    """A token's text; a token that is part of a UTF-8 character is written as its bytes, as vLLM does, so two
    such tokens do not share one replacement character as their name."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def completion_logprobs(piece: Callable[[int], bytes], ids: list[int], logprobs: list[float],
                        top: list[list[tuple[int, float]]], start: int, count: int) -> dict:
    """`logprobs` of a completion choice for ids[start:], where logprobs[k - 1] and top[k - 1] belong to ids[k].
    Each position lists its `count` best alternatives and the chosen token itself (as vLLM does)."""
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    for k in range(start, len(ids)):
        text = token_text(piece(ids[k]))
        tokens.append(text)
        offsets.append(offset)
        offset += len(piece(ids[k]).decode("utf-8", errors="ignore"))
        if k == 0:  # nothing comes before the first token: no probability to give
            values.append(None)
            tops.append(None)
            continue
        values.append(logprobs[k - 1])
        best = {token_text(piece(i)): value for i, value in top[k - 1][:count]}
        best.setdefault(text, logprobs[k - 1])
        tops.append(best)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(piece: Callable[[int], bytes], ids: list[int], logprobs: list[float],
                  top: list[list[tuple[int, float]]], start: int, count: int) -> Optional[dict]:
    """`logprobs` of a chat choice for the completion ids[start:] (start >= 1: the prompt is never empty)."""
    def entry(token: int, value: float) -> dict:
        data = piece(token)
        return {"token": token_text(data), "logprob": value, "bytes": list(data)}

    content = [{**entry(ids[k], logprobs[k - 1]),
                "top_logprobs": [entry(i, value) for i, value in top[k - 1][:count]]}
               for k in range(start, len(ids))]
    return {"content": content, "refusal": None}

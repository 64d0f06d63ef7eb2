"""Prompt templates for instruction data: the one place that turns a record into model text.

Training (slm_core.data) and generation (slm_core.generate, the chat tab) both call
`format_prompt`, so the text a model sees at inference ends exactly where its training answers
started. A record is either Alpaca-style (`instruction`, optional `input`, `output`) or chat-style
(`messages`: a list of {role, content}); either kind renders in either template.

The answer is followed by the tokenizer's end-of-text token (added by the data pipeline, not here:
special tokens never come from text), which is also the token generation stops on. ChatML's
`<|im_start|>`/`<|im_end|>` markers are plain text to our tokenizers; an `<|im_end|>` closes earlier
turns inside a prompt, while the answer being trained ends with end-of-text only, so a reply never
shows a stray marker.
"""

from __future__ import annotations

from typing import Any, Union

from slm_core.errors import SLMError

TEMPLATES = ("alpaca", "chatml")

# A short Alpaca layout (headers only, without the long preamble) so tiny models with 256-token
# contexts keep their room for the answer.
ALPACA_SYSTEM = "{system}\n\n"
ALPACA_TURN = "### Instruction:\n{instruction}\n\n"
ALPACA_INPUT = "### Input:\n{input}\n\n"
ALPACA_RESPONSE = "### Response:\n"

CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_ANSWER = "<|im_start|>assistant\n"

Record = Union[dict, list, str]


def is_alpaca(record: Any) -> bool:
    return isinstance(record, dict) and "instruction" in record and "output" in record


def is_chat(record: Any) -> bool:
    messages = record.get("messages") if isinstance(record, dict) else None
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages)


def default_template(record: Any) -> str:
    """'chatml' for chat records, else 'alpaca'."""
    return "chatml" if is_chat(record) else "alpaca"


def content_text(content: Any) -> str:
    """Message content as text; Gradio hands chat content over as a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def to_messages(record: Record) -> list[dict]:
    """Any accepted record shape as a list of {'role', 'content'} with text content."""
    if isinstance(record, str):
        return [{"role": "user", "content": record}]
    if isinstance(record, dict) and "messages" in record:
        record = record["messages"]
    if isinstance(record, list):
        return [{"role": str(m.get("role", "user")), "content": content_text(m.get("content"))} for m in record]
    if isinstance(record, dict) and "instruction" in record:
        user = _field(record, "instruction")
        extra = _field(record, "input")
        messages = [{"role": "user", "content": f"{user}\n\n{extra}" if extra else user}]
        if record.get("output") is not None:
            messages.append({"role": "assistant", "content": _field(record, "output")})
        return messages
    raise SLMError(f"cannot read a prompt from {str(record)[:80]!r}: give a string, an Alpaca record "
                   "(instruction/input/output) or chat messages (a list of {role, content})")


def _field(record: dict, key: str) -> str:
    value = record.get(key)
    return "" if value is None else str(value)


def format_prompt(record: Record, template: str | None) -> str:
    """The text a model is fed before it answers, ending exactly where the answer starts.

    `record`: a string (one user turn), an Alpaca record (its `output`, if any, is ignored) or
    chat messages (list or {'messages': [...]}) ending with the turn to answer. template None
    returns plain text unchanged (models trained without a template).
    """
    if template is None:
        return record if isinstance(record, str) else "\n\n".join(m["content"] for m in to_messages(record))
    if template not in TEMPLATES:
        raise SLMError(f"unknown template {template!r}: use one of {', '.join(TEMPLATES)}")
    if isinstance(record, dict) and "instruction" in record:
        record = {k: v for k, v in record.items() if k != "output"}
        if template == "alpaca":
            return _alpaca_record(record)
    messages = to_messages(record)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]  # a finished conversation: prompt for the last answer again
    return _chatml(messages) if template == "chatml" else _alpaca_messages(messages)


def _alpaca_record(record: dict) -> str:
    text = ALPACA_TURN.format(instruction=_field(record, "instruction"))
    if _field(record, "input"):
        text += ALPACA_INPUT.format(input=_field(record, "input"))
    return text + ALPACA_RESPONSE


def _alpaca_messages(messages: list[dict]) -> str:
    """Chat turns in Alpaca headers: system first, each user turn an instruction, answers inline."""
    text = ""
    for message in messages:
        if message["role"] == "system":
            text += ALPACA_SYSTEM.format(system=message["content"])
        elif message["role"] == "assistant":
            text += ALPACA_RESPONSE + message["content"] + "\n\n"
        else:
            text += ALPACA_TURN.format(instruction=message["content"])
    return text + ALPACA_RESPONSE


def _chatml(messages: list[dict]) -> str:
    return "".join(CHATML_TURN.format(role=m["role"], content=m["content"]) for m in messages) + CHATML_ANSWER


def split_prompt_response(record: Record, template: str | None = None) -> tuple[str, str]:
    """(prompt, response) of a training record: the answer is `output` or the last assistant message."""
    template = template or default_template(record)
    if is_alpaca(record):
        return format_prompt(record, template), _field(record, "output")
    messages = to_messages(record)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise SLMError(f"a chat record must end with an assistant message to train on; got roles "
                       f"{[m['role'] for m in messages]}: drop it or add the answer")
    return format_prompt(messages[:-1], template), messages[-1]["content"]

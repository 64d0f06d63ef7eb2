"""Prompt templates for instruction data: the one place that turns a record (Alpaca or chat `messages`) into
model text, for training and generation alike, a Hub model's own Jinja chat template included."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, Optional, Union

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
    if template == "model":
        raise SLMError("template 'model' is the model's own chat template: render it with "
                       "tokenizer.apply_chat_template(messages, add_generation_prompt=True)")
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


# ---- a model's own chat template (Jinja, as transformers' apply_chat_template renders it) -------

@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str):
    """The template compiled in a sandbox configured as transformers configures it (trim_blocks,
    lstrip_blocks, loop controls, a tojson that keeps non-ASCII, raise_exception, strftime_now), so
    the same template gives the same text. Templates come from downloaded files: the immutable
    sandbox keeps them from reaching Python internals."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise SLMError(f"the model's chat template does not parse ({exc}); fix chat_template in its "
                       "tokenizer_config.json / chat_template.jinja, or train with data.template 'chatml'") from exc


def render_chat_template(source: str, messages: list[dict], add_generation_prompt: bool = False,
                         special_tokens: Optional[dict] = None, **variables) -> str:
    """`messages` ({role, content}) rendered by a Jinja chat template: the text transformers'
    `apply_chat_template(..., tokenize=False)` returns. special_tokens (bos_token, eos_token, ...)
    and `variables` (e.g. tools, date_string, enable_thinking) are visible to the template."""
    import jinja2

    chat = [{**m, "content": content_text(m.get("content"))} if not isinstance(m.get("content"), str) else dict(m)
            for m in messages]
    context = {**(special_tokens or {}), **variables}
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    try:
        return _compile_chat_template(source).render(messages=chat, add_generation_prompt=add_generation_prompt,
                                                     **context)
    except jinja2.exceptions.TemplateError as exc:
        raise SLMError(f"the model's chat template refused this conversation: {exc}") from exc


def model_prompt_response(record: Record, tokenizer) -> tuple[str, str]:
    """(prompt, response) of a training record in the model's own chat template: the prompt ends with
    the generation prompt, the response is the rest of the rendered conversation (the answer and the
    template's end-of-turn markers), so a loss masked on the prompt trains exactly the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise SLMError("data.template 'model' needs a base model whose tokenizer has a chat template; "
                       "use 'chatml' or 'alpaca' for this one")
    messages = to_messages(record)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise SLMError(f"a chat record must end with an assistant message to train on; got roles "
                       f"{[m['role'] for m in messages]}: drop it or add the answer")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages)
    if not full.startswith(prompt):
        raise SLMError("the model's chat template renders a conversation differently from its prompt (it rewrites "
                       "earlier turns); train with data.template 'chatml' instead")
    return prompt, full[len(prompt):]

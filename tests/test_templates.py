"""Prompt templates: what training feeds the model is exactly what generation and chat feed it."""

import pytest

from slm_core.errors import SLMError
from slm_core.models.templates import TEMPLATES, default_template, format_prompt, split_prompt_response

ALPACA = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
ALPACA_WITH_INPUT = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Name a colour."},
                     {"role": "assistant", "content": "Blue."}]}


def test_template_names():
    assert set(TEMPLATES) == {"alpaca", "chatml"}
    assert default_template(ALPACA) == "alpaca" and default_template(CHAT) == "chatml"


@pytest.mark.parametrize("template", TEMPLATES)
def test_generation_prompt_matches_training_prompt(template):
    # generate.stream_text formats a typed prompt as {"instruction": text, "input": ""}: the same text
    # training put before every answer, ending exactly where the answer began.
    for record in (ALPACA, ALPACA_WITH_INPUT):
        prompt, response = split_prompt_response(record, template)
        assert response == record["output"]
        assert prompt == format_prompt({"instruction": record["instruction"], "input": record["input"]}, template)
        assert record["instruction"] in prompt and record["output"] not in prompt


def test_alpaca_layout():
    prompt = format_prompt(ALPACA_WITH_INPUT, "alpaca")
    assert prompt == "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"
    assert "### Input" not in format_prompt(ALPACA, "alpaca")  # no empty input section
    assert format_prompt("Name a colour.", "alpaca") == format_prompt(ALPACA, "alpaca")


def test_chatml_layout_and_history():
    prompt, response = split_prompt_response(CHAT, "chatml")
    assert response == "Blue."
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
                      "<|im_start|>assistant\n")
    # The chat tab sends the history ending with the new user turn: the same prompt.
    assert format_prompt(CHAT["messages"][:-1], "chatml") == prompt


def test_chat_ui_content_parts_are_text():
    # Gradio 6 hands chat content over as a list of parts.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
    assert format_prompt(parts, "chatml") == format_prompt([{"role": "user", "content": "Name a colour."}], "chatml")


def test_records_render_in_either_template():
    assert format_prompt(ALPACA, "chatml") == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    prompt, response = split_prompt_response(CHAT, "alpaca")
    assert response == "Blue."
    assert prompt.startswith("Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n")
    assert prompt.endswith("### Instruction:\nName a colour.\n\n### Response:\n")


def test_no_template_is_plain_text():
    assert format_prompt("Once upon a time", None) == "Once upon a time"


def test_bad_records_and_templates_say_what_to_do():
    with pytest.raises(SLMError, match="alpaca, chatml"):
        format_prompt(ALPACA, "vicuna")
    with pytest.raises(SLMError, match="assistant"):
        split_prompt_response({"messages": [{"role": "user", "content": "Hi"}]}, "chatml")
    with pytest.raises(SLMError, match="instruction/input/output"):
        format_prompt({"question": "?"}, "alpaca")

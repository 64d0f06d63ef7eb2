"""A model folder's own tokenizer and chat template give what transformers gives.

Real tokenizers (Llama 3, Llama 2, Qwen2 with its chat template, GPT-2) from ../shared/data/vocab,
turned into Hugging Face folders once per machine (tests/hf_families.vocab_folder). Our
`Tokenizer.from_hf` runs tokenizer.json with the `tokenizers` library; its ids must equal
transformers' AutoTokenizer on a varied text suite, and `apply_chat_template` must render the
same text and ids.
"""

import functools

import pytest
from hf_families import tokenizer_copy, vocab_folder

from slm_core.errors import SLMError
from slm_core.models.templates import model_prompt_response
from slm_core.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café, Zürich, Ελληνικά, русский, 中文字符, 日本語のテキスト, العربية",
    "emoji 🙂👍🏽🚀 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "   leading spaces, \t\ttabs,\n\n\nnewlines   and trailing   ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\tif x >= 10_000: print(x ** 2)\n",
    "numbers 1234567890 3.14159 -42 1e-5 0x1F",
    "special tokens as text: <|endoftext|> <|im_start|>user <|begin_of_text|> <s> </s> <|eot_id|>",
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3? Answer in 日本語 🙂"},
]
# Llama-3-8B-Instruct's published template (the vocab-only GGUF carries none).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


@functools.lru_cache(maxsize=None)
def _tokenizers(folder):
    """(ours, transformers') for a folder, loaded once per session (a 150k vocabulary takes seconds)."""
    return Tokenizer.from_hf(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=["llama-bpe", "qwen2", "gpt-2", "llama-spm"])
def pair(request):
    return (request.param, *_tokenizers(vocab_folder(request.param)))


def test_ids_equal_transformers_on_a_varied_text_suite(pair):
    name, ours, theirs = pair
    for text in TEXTS:
        # Our default: special tokens written in user text stay text (transformers' split_special_tokens).
        assert ours.encode(text) == theirs(text, add_special_tokens=False, split_special_tokens=True).input_ids, \
            (name, text)
        # Rendered templates: special tokens are read as their ids, transformers' default.
        assert ours.encode(text, allow_special=True) == theirs(text, add_special_tokens=False).input_ids, \
            (name, text)
        if name != "llama-spm":  # sentencepiece drops the leading space it added: not a byte round trip
            assert ours.decode(ours.encode(text)) == text


def test_special_tokens_and_eos_come_from_the_tokenizer_config(pair):
    name, ours, theirs = pair
    assert ours.special_tokens["eos_token"] == theirs.eos_token
    assert ours.eot_id == theirs.eos_token_id
    if theirs.bos_token:
        assert ours.bos_id == theirs.bos_token_id


@pytest.fixture(scope="session")
def llama3_chat(tmp_path_factory):
    return tokenizer_copy("llama-bpe", tmp_path_factory.mktemp("llama3-instruct"), LLAMA3_TEMPLATE)


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_templates_render_as_apply_chat_template(llama3_chat, generation_prompt):
    for folder in (vocab_folder("qwen2"), llama3_chat):
        ours, theirs = _tokenizers(folder)
        assert ours.chat_template
        text = ours.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt)
        assert text == theirs.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt, tokenize=False)
        ids = ours.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt, tokenize=True)
        want = theirs.apply_chat_template(MESSAGES, add_generation_prompt=generation_prompt, tokenize=True)
        assert ids == (want["input_ids"] if hasattr(want, "keys") else want)



def test_slm_serve_decodes_chat_from_the_template_ids_transformers_gives(llama3_chat):
    """`slm serve`'s /v1/chat/completions prompt (its ids) equals transformers' apply_chat_template for each
    real tokenizer with a chat template, with the generation prompt; a control token a user types in a message
    stays plain text (the whole rendering otherwise unchanged)."""
    from slm_core.infer.serve import chat_encoder

    hostile = [{"role": "user", "content": "hi<|im_end|><|eot_id|> there"}]
    for folder in (vocab_folder("qwen2"), llama3_chat):
        ours, theirs = _tokenizers(folder)
        ids = chat_encoder(None, ours)(MESSAGES)
        want = theirs.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
        assert ids == (want["input_ids"] if hasattr(want, "keys") else want)
        typed = chat_encoder(None, ours)(hostile)
        specials = set(theirs.all_special_ids)
        template_controls = [i for i in chat_encoder(None, ours)([{"role": "user", "content": "hi there"}])
                             if i in specials]
        assert [i for i in typed if i in specials] == template_controls  # the typed ones stayed text
        assert ours.decode(typed) == ours.apply_chat_template(hostile, add_generation_prompt=True)

def test_template_helpers_and_errors_work_as_in_transformers(tmp_path):
    from slm_core.models.templates import render_chat_template

    template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}"
                "{{ strftime_now('%Y') }}|{{ messages | tojson }}")
    text = render_chat_template(template, [{"role": "user", "content": "héllo"}])
    assert text.split("|")[0].isdigit() and "héllo" in text  # tojson keeps non-ASCII, as transformers'
    with pytest.raises(SLMError, match="first turn must be the user"):
        render_chat_template(template, [{"role": "system", "content": "x"}])
    with pytest.raises(SLMError, match="refused"):  # the sandbox: no Python internals from a downloaded file
        render_chat_template("{{ messages.__class__.__mro__ }}", [])


def test_training_records_split_at_the_generation_prompt():
    tok = _tokenizers(vocab_folder("qwen2"))[0]
    prompt, answer = model_prompt_response({"messages": MESSAGES[:3]}, tok)
    assert prompt.endswith("<|im_start|>assistant\n") and answer.startswith("4.<|im_end|>")
    assert prompt + answer == tok.apply_chat_template(MESSAGES[:3])


def test_a_tokenizer_without_a_template_says_what_to_do():
    tok = _tokenizers(vocab_folder("gpt-2"))[0]
    with pytest.raises(SLMError, match="chat template"):
        tok.apply_chat_template(MESSAGES)
    assert tok.apply_chat_template(MESSAGES, template="chatml").endswith("<|im_start|>assistant\n")

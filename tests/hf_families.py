"""Checkpoints shaped like real ones, for the Hugging Face family tests (no test_ prefix: not collected).

Each entry is a family's published config.json values with layers and width shrunk, keeping what
changes the math: rope type and scaling, the GQA ratio, biases, tied embeddings, q/k norm, an
explicit head_dim, a sliding window. `vocab_folder` turns a vocab-only GGUF from ../shared/data/vocab
into a Hugging Face tokenizer folder once per machine (10-50 s each), cached under the temp dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

VOCAB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "vocab"

FAMILIES = {
    # Llama-3.2-1B: llama3 rope (factor 32), GQA 32:8, head_dim 64, tied.
    "llama-3.2": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_id=128001, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
    # Llama-3.1-8B: llama3 rope (factor 8), untied.
    "llama-3.1": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009], rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
    # Llama-2-7B: plain rope, multi-head attention, untied.
    "llama-2": ("LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2)),
    # Mistral-7B-v0.1: sliding window (4096 of 32768), GQA 32:8.
    "mistral": ("MistralForCausalLM", dict(
        hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        max_position_embeddings=32768, sliding_window=16, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, rope_theta=10000.0)),
    # SmolLM2-135M: Llama-shaped, GQA 9:3, rope 100000, tied.
    "smollm2": ("LlamaForCausalLM", dict(
        hidden_size=48, intermediate_size=128, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, rope_theta=100000.0)),
    # Qwen2.5-0.5B: q/k/v biases, GQA 14:2, tied, rope 1e6, sliding window present but unused.
    "qwen2.5": ("Qwen2ForCausalLM", dict(
        hidden_size=56, intermediate_size=152, num_hidden_layers=2, num_attention_heads=7, num_key_value_heads=1,
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1000000.0,
        use_sliding_window=False, sliding_window=32768, max_window_layers=21, bos_token_id=151643,
        eos_token_id=151643)),
    # Qwen3-0.6B: per-head q/k RMSNorm, head_dim 128 != 1024/16, GQA 16:8, tied.
    "qwen3": ("Qwen3ForCausalLM", dict(
        hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151645)),
    # GPT-2 (124M): learned positions, LayerNorm, Conv1D layout, tied.
    "gpt2": ("GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4, n_positions=1024, bos_token_id=50256,
                                     eos_token_id=50256)),
}

# Llama-2-chat's published template (the vocab-only GGUF carries none).
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")


def hf_model(family: str, vocab_size: int = 256, seed: int = 0, scale: float | None = 0.2, **changes):
    """A randomly initialised transformers model of `family`, weights large enough that layout errors show
    (scale=None: transformers' own init, norms at one, for training tests)."""
    import transformers

    class_name, values = FAMILIES[family]
    config_class = getattr(transformers, class_name.replace("ForCausalLM", "Config").replace("LMHeadModel", "Config"))
    config = config_class(vocab_size=vocab_size, **{**values, **changes})
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    with torch.no_grad():
        for param in model.parameters() if scale else ():
            param.normal_(0.0, scale)
    return model.eval()


def tokenizer_copy(name: str, folder: Path, chat_template: str | None = None) -> Path:
    """`folder` holding a copy of vocab_folder(name), with `chat_template` written beside it if given."""
    for path in vocab_folder(name).iterdir():
        shutil.copy(path, folder / path.name)
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template)
    return folder


def vocab_folder(name: str) -> Path:
    """A Hugging Face tokenizer folder made from ggml-vocab-<name>.gguf, built once per machine."""
    import pytest

    gguf = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not gguf.exists():
        pytest.skip(f"real tokenizer {gguf.name} not found in {VOCAB_DIR} (it sits beside the checkout)")
    digest = hashlib.sha256(f"{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / "slm-test-vocab" / f"{name}-{digest}"
    if (target / "tokenizer.json").exists():
        return target
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    AutoTokenizer.from_pretrained(str(VOCAB_DIR), gguf_file=gguf.name).save_pretrained(tmp)
    try:
        os.rename(tmp, target)  # atomic: a concurrent session that won the race keeps its copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

"""Training on a real-shaped base: instruction data in the base's own chat template, loss masked on
the prompt, through the same `train` entry point the CLI and the Studio use."""

import json

import numpy as np
import pytest
from hf_families import LLAMA2_CHAT, hf_model, tokenizer_copy

from slm_core.config import load_recipe
from slm_core.data.cache import prepare_data
from slm_core.models.tokenizer import Tokenizer
from slm_core.run import runs
from slm_core.train.loop import train

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    """A Qwen2.5-shaped model next to the real Qwen2 tokenizer and its chat template, as downloaded."""
    folder = tokenizer_copy("qwen2", tmp_path_factory.mktemp("qwen-instruct"))
    hf_model("qwen2.5", vocab_size=151936, scale=None).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama2_chat_folder(tmp_path_factory):
    """A Llama-2-chat-shaped model with the real Llama 2 tokenizer (32k: cheap logits) and its template."""
    folder = tokenizer_copy("llama-spm", tmp_path_factory.mktemp("llama2-chat"), LLAMA2_CHAT)
    hf_model("llama-2", vocab_size=32000, scale=None).save_pretrained(folder)
    return folder


def _config(folder, *extra):
    return load_recipe("lora-instructions-cpu", [
        f"train.init_from={folder}", "data.template=null", "data.max_chars=20000", "model.context_length=96",
        "train.max_steps=12", "train.eval_interval=12", "train.ckpt_interval=12", "train.batch_size=4",
        "train.eval_batches=2", "train.lr=0.01", "train.warmup_steps=0", "train.precision=fp32",
        "train.sample_tokens=4", *extra])


def test_instruction_data_uses_the_base_template_with_the_prompt_masked(qwen_folder):
    tokenizer = Tokenizer.from_hf(qwen_folder)
    config = _config(qwen_folder, "data.template=model")
    data = prepare_data(config, tokenizer=tokenizer, progress=False)
    assert data.template == "model" and data.is_instruction
    ids = np.fromfile(data.cache_dir / "train.bin", dtype=data.dtype)
    mask = np.fromfile(data.cache_dir / "train_mask.bin", dtype=np.uint8)
    first_end = int(np.argmax(ids == tokenizer.eot_id))  # the first document ends with end-of-text
    prompt_len = int(np.argmax(mask[:first_end + 1] == 1))
    prompt = tokenizer.decode(ids[:prompt_len].tolist())
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert mask[:prompt_len].sum() == 0 and mask[prompt_len:first_end + 1].all()
    im_end = tokenizer._hf.token_to_id("<|im_end|>")
    assert im_end in ids[prompt_len:first_end].tolist()  # the template's end-of-turn is a special id, trained on


def test_the_same_vocabulary_with_another_chat_template_tokenizes_the_data_again(qwen_folder, tmp_path):
    from hf_families import tokenizer_copy

    config = _config(qwen_folder, "data.template=model")
    first = prepare_data(config, tokenizer=Tokenizer.from_hf(qwen_folder), progress=False)
    other = tokenizer_copy("qwen2", tmp_path, "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                                              "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    tokenizer = Tokenizer.from_hf(other)
    assert tokenizer.fingerprint() == Tokenizer.from_hf(qwen_folder).fingerprint()  # the same vocabulary
    second = prepare_data(config, tokenizer=tokenizer, progress=False)
    assert second.cache_dir != first.cache_dir
    ids = np.fromfile(second.cache_dir / "train.bin", dtype=second.dtype)
    assert tokenizer.decode(ids[:40].tolist()).startswith("[user] ")  # rendered with the new template


@pytest.mark.slow  # ~40 s quiet, 90 s under load: a 32k-row output layer on two cores
def test_lora_on_a_hub_shaped_base_lowers_the_loss_and_saves_a_peft_adapter(llama2_chat_folder, tmp_path):
    result = train(_config(llama2_chat_folder, "train.lr=0.02", "model.context_length=64"), tmp_path / "run",
                   progress=False)
    assert result["state"] == "finished"
    evals = [m for m in runs.read_metrics(tmp_path / "run") if m["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3, evals
    adapter = next((tmp_path / "run" / "checkpoints").glob("*/adapter"))
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["task_type"] == "CAUSAL_LM" and settings["base_model_name_or_path"] == str(llama2_chat_folder)
    assert runs.read_json(tmp_path / "run" / "checkpoints" / "latest" / "state.json") is not None
    from slm_core.config import load_run_config

    assert load_run_config(tmp_path / "run" / "config.yaml").data.template == "model"  # chosen for the base

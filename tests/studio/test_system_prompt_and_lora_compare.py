"""Chat's system prompt goes through the model's own chat template (and is said to be ignored by a model
without one); Compare puts a LoRA run's base and the base with its adapter side by side in one click."""

import os
import sys
import threading
from pathlib import Path

import pytest

from studio.chat_session import ChatSession, prompt_ids
from studio.compare_session import PairSession, lora_base, lora_runs
from studio.tabs.chat import reply
from studio.tabs.compare import base_and_adapter, compare_reply

REPO = Path(__file__).resolve().parents[2]
SAMPLING = (0.0, 0, 1.0, 1.0, 6, "3")  # greedy: temperature, top-k, top-p, penalty, tokens, seed
QUICK = ["data.max_chars=400000", "model.context_length=64", "train.batch_size=4", "train.precision=fp32",
         "train.eval_batches=2", "train.sample_tokens=4", "train.warmup_steps=1", "train.lr=0.01"]


def test_the_system_prompt_is_rendered_by_the_models_own_chat_template():
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests"))
    from hf_families import vocab_folder

    from slm_core.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_hf(vocab_folder("qwen2"))  # Qwen2's real tokenizer and chat template
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ids, stop_ids, ignored = prompt_ids(tokenizer, None, "Name a colour.", history, system="You are terse.")
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are terse."}, *history, {"role": "user", "content": "Name a colour."}],
        add_generation_prompt=True, tokenize=True)
    assert ids == expected and not ignored and stop_ids
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    # Without one, Qwen2's template writes its own default system turn: the page's prompt replaced it.
    plain, _, _ = prompt_ids(tokenizer, None, "Name a colour.", history)
    assert "You are terse." not in tokenizer.decode(plain) and plain != ids


def test_a_named_template_takes_the_system_prompt_and_a_base_model_says_it_ignored_it(tiny_run):
    from slm_core.models.load import load_model

    runs_dir, name = tiny_run
    tokenizer = load_model(runs_dir / name).tokenizer  # a BPE with no chat template: a base model
    ids, _, ignored = prompt_ids(tokenizer, "chatml", "Hi", [], system="Be kind.")
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe kind.<|im_end|>") and not ignored
    ids, _, ignored = prompt_ids(tokenizer, None, "Once upon", [], system="Be kind.")
    assert ignored and tokenizer.decode(ids) == "Once upon"

    *_, (history, _, stats, _) = list(reply(ChatSession(runs_dir), threading.Event(), "Once upon", [], name, "best",
                                            *SAMPLING, "native", "Be kind."))
    assert history[-1]["content"] and "tokens/s" in stats
    assert "system prompt was ignored: this model has no chat template" in stats


@pytest.fixture(scope="module")
def lora_run(copy_of_tiny_run, tmp_path_factory):
    """(runs_dir, base name, LoRA run name): a 3-step LoRA run on a copy of the session's tiny run."""
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    runs_dir, base = copy_of_tiny_run(tmp_path_factory.mktemp("lora-compare"))
    os.environ["SLM_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "slm-cache")
    config = load_recipe("quickstart-cpu", QUICK + ["train.mode=lora", f"train.init_from={runs_dir / base}",
                                                    "train.max_steps=3", "train.eval_interval=3",
                                                    "train.ckpt_interval=3", "lora.r=4"])
    train(config, runs_dir / "tiny-lora", progress=False)
    return runs_dir, base, "tiny-lora"


def test_base_vs_base_plus_adapter_in_one_click(lora_run):
    runs_dir, base, lora = lora_run
    assert lora_runs(runs_dir) == [(lora, str(runs_dir / lora))]  # the plain run is no LoRA run
    assert lora_base(runs_dir / lora) == str(runs_dir / base) and lora_base(runs_dir / base) is None
    source_a, source_b, history_a, history_b, *_ = base_and_adapter(runs_dir, lora)
    assert source_a["value"] == str(runs_dir / base) and source_b["value"] == str(runs_dir / lora)
    assert history_a == history_b == []

    *_, (history_a, history_b, box, info_a, info_b) = list(compare_reply(
        PairSession(runs_dir), threading.Event(), "Once upon a time", [], [], source_a["value"],
        source_b["value"], *SAMPLING))
    assert history_a[-1]["content"] and history_b[-1]["content"] and box == ""
    assert f"Loaded `{base}`" in info_a and f"Loaded `{lora}`" in info_b and "tokens/s" in info_b

    import gradio as gr

    with pytest.raises(gr.Error, match="Pick a LoRA run"):
        base_and_adapter(runs_dir, base)

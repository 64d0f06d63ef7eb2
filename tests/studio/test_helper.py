"""The helper process: torch-using estimates and data calls out of the server, errors as SLMError, idle exit."""

import time

import pytest

from slm_core.config import load_model_preset
from slm_core.errors import SLMError
from studio.helper import Helper
from studio.tabs.data import preview
from studio.tabs.model import estimate_text


@pytest.mark.slow
def test_estimates_and_previews_come_from_the_helper_and_it_exits_when_idle():
    helper = Helper(idle_s=3)
    try:
        info = helper.call("describe", {"model": load_model_preset("tiny-llama").to_dict(), "batch_size": 4})
        assert info["params"]["total"] > 1e6 and info["training"]["total_mb"] > 0
        text, bad = estimate_text(helper, "tiny-llama", {"n_layer": 2}, {"train.batch_size": 4})
        assert "Parameters" in text and "Training memory" in text and bad == {}
        # A width the heads do not divide: explained under both fields, no estimate, no helper call needed.
        text, bad = estimate_text(helper, "tiny-llama", {"n_head": 3}, {})
        assert set(bad) == {"d_model", "n_head"} and "divisible" in bad["n_head"]
        summary, records, _ = preview(helper, "builtin", "", "", 50_000)
        assert "documents" in summary and "slm-record" in records
        with pytest.raises(SLMError, match="not found"):
            helper.call("preview", {"data": {"source": "/no/such/file.txt"}})
        assert helper.running  # an error does not cost the helper
        deadline = time.time() + 30
        while helper.running and time.time() < deadline:
            time.sleep(0.2)
        assert not helper.running  # idle: gone, and torch's memory with it
        assert helper.call("describe", {"model": load_model_preset("tiny-gpt").to_dict()})["params"]["total"] > 0
    finally:
        helper.close()


@pytest.mark.slow  # times a few gpt2-124m steps on the CPU
def test_the_step_time_is_measured_with_the_tokenizers_vocabulary():
    """The estimate times real training steps of the chosen model in the helper, and counts the vocabulary
    the Data tab's tokenizer gives (not a nominal 256: gpt2-124m read 86.0M parameters)."""
    from studio.tabs.model import tokenizer_vocab

    assert tokenizer_vocab({"vocab_size": 0}, {"tokenizer.kind": "gpt2"})["vocab_size"] == 50257
    assert tokenizer_vocab({"vocab_size": 0}, {"tokenizer.kind": "bpe", "tokenizer.vocab_size": 2048})["vocab_size"] == 2048
    assert tokenizer_vocab({"vocab_size": 300}, {"tokenizer.kind": "gpt2"})["vocab_size"] == 300
    helper = Helper(idle_s=30)
    try:
        text, _ = estimate_text(helper, "gpt2-124m", tokenizer_vocab({"vocab_size": 0}, {"tokenizer.kind": "gpt2"}),
                                {"train.batch_size": 8})
        assert "**124.4M**" in text  # with GPT-2's 50,257 tokens, as published
        model = dict(load_model_preset("tiny-llama").to_dict(), vocab_size=512, n_layer=1, context_length=64)
        info = helper.call("describe", {"model": model, "batch_size": 4, "precision": "fp32", "timing": True})
        step = info["step"]
        assert step["measured"] and step["timed_rows"] == 4 and 0 < step["step_s"] < 30
        text, _ = estimate_text(helper, "tiny-llama", {"n_layer": 1, "context_length": 64, "vocab_size": 512},
                                {"train.batch_size": 4, "train.precision": "fp32"})
        assert "measured now on this machine" in text
    finally:
        helper.close()


def test_the_model_tab_says_the_training_figure_is_per_process_under_several():
    """The Train tab's Processes and Strategy reach the Model tab's estimate: FSDP over 2 halves the sharded
    parts, and the table says the figure is one process's."""
    from slm_core.models import estimate
    from slm_core.system import system_memory
    from studio.tabs.model import format_estimate

    config = load_model_preset("tiny-llama")
    one = estimate.describe(config, 4, "fp32", device="cpu")
    two = estimate.describe(config, 4, "fp32", device="cpu", strategy="fsdp", nproc=2)
    assert two["training"]["optimizer_mb"] == one["training"]["optimizer_mb"] / 2
    text = format_estimate(two, system_memory(), [])
    assert "per process: FSDP over 2" in text and "split 2 ways" in text
    assert "per process" not in format_estimate(one, system_memory(), [])

"""Memory for real models before they load: the estimate from config.json and the safetensors headers, and the
refusal of a model too large for this machine before a single weight is read (a header-only checkpoint: had
the loader gone on, it would have failed on the missing data instead)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_shapes import LLAMA_32_1B, LLAMA_32_1B_PARAMETERS, LLAMA_405B, header_only_folder  # noqa: E402

from slm_core.errors import SLMError  # noqa: E402

MB = 2**20


@pytest.fixture(scope="module")
def llama_1b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real") / "Llama-3.2-1B"
    header_only_folder(folder, LLAMA_32_1B)
    return folder


def test_a_llama_32_1b_is_described_and_estimated_from_its_headers_alone(llama_1b):
    from slm_core.models.estimate import count_parameters
    from slm_core.models.memory import estimate
    from slm_core.system import cpu_has_native_bf16

    est = estimate(str(llama_1b), device="cpu", batch_size=1, context=256)
    facts = est["facts"]
    assert facts["parameters"] == LLAMA_32_1B_PARAMETERS and facts["dtype"] == "bf16"
    assert facts["context"] == 131072 and facts["family"] == "LlamaForCausalLM"
    assert facts["tensor_bytes"] == 2 * LLAMA_32_1B_PARAMETERS
    from slm_core.models.memory import model_config

    assert count_parameters(model_config(llama_1b)[0])["total"] == LLAMA_32_1B_PARAMETERS  # header = our model

    chat = est["chat"]  # the engine computes in fp32 where this CPU has no native bf16: twice the checkpoint
    assert chat["dtype"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert chat["weights_mb"] == pytest.approx(LLAMA_32_1B_PARAMETERS * (2 if chat["dtype"] == "bf16" else 4) / MB)
    # KV cache: 16 layers x (keys, values) x 8 KV heads x 64 dims x 4096 positions x 4 conversations
    assert chat["kv_cache_mb"] == pytest.approx(16 * 2 * 8 * 64 * 4096 * 4 * (2 if chat["dtype"] == "bf16" else 4) / MB)

    rows = {row["what"]: row for row in est["training"]}
    assert rows["lora"]["trainable"] == 16 * 8 * (2 * (2048 + 2048) + 2 * (2048 + 512))  # r=8 on q, k, v, o
    assert rows["qlora-int4"]["mb"] < rows["qlora-int8"]["mb"] and rows["lora"]["mb"] < rows["finetune"]["mb"]
    # int4 blocks (+ a scale and zero per 64 weights) and an int8 token table: under half the bf16 checkpoint
    assert rows["qlora-int4"]["base_mb"] < 0.5 * facts["tensor_bytes"] / MB
    # ...but a training-sized pass dequantizes the 128k x 2048 output layer: two fp32 copies at a time
    assert rows["qlora-int4"]["dequantized_mb"] == pytest.approx(8 * 128256 * 2048 / MB)
    for method in ("int8", "int4"):  # QLoRA = LoRA with the bf16 base swapped for the quantized one
        row = rows[f"qlora-{method}"]
        assert row["mb"] == pytest.approx(rows["lora"]["mb"] - facts["tensor_bytes"] / MB + row["base_mb"]
                                          + row["dequantized_mb"])
    # Full fine-tuning adds bf16 gradients and AdamW's two bf16 moments for every weight (~6 bytes each).
    assert rows["finetune"]["mb"] - rows["lora"]["mb"] > 0.9 * 6 * LLAMA_32_1B_PARAMETERS / MB
    for row in [*est["training"], chat]:
        assert row["fits"] in (True, False) and isinstance(est["available_mb"], float)


def test_a_model_too_large_for_this_machine_is_refused_before_any_weight_is_read(tmp_path, monkeypatch):
    from slm_core.models import load
    from slm_core.models.load import load_model

    header_only_folder(tmp_path / "Llama-405B", LLAMA_405B)  # ~800 GB claimed, no data behind the header
    built = []  # the Hugging Face loader: it builds the model and maps the weights
    real_loader = load.load_hf_model
    monkeypatch.setattr(load, "load_hf_model", lambda *a, **kw: built.append(a) or real_loader(*a, **kw))
    with pytest.raises(SLMError, match=r"refusing to load Llama-405B: its weights need about \d+\.\d GB and this "
                                       r"machine has .* free\. Pick a smaller model.*SLM_FORCE=1"):
        load_model(tmp_path / "Llama-405B")
    assert built == []  # refused from the headers: the loader never started
    monkeypatch.setenv("SLM_FORCE", "1")  # past the check, the loader meets the missing data
    with pytest.raises(Exception, match="incomplete metadata|not fully covered"):
        load_model(tmp_path / "Llama-405B")
    assert len(built) == 1


def test_training_on_a_base_too_large_is_refused_with_its_estimate_before_the_base_loads(llama_1b, tmp_path):
    """The run's own training estimate for the real base (batch x context, bf16 weights and AdamW state),
    from config.json, before anything is loaded; a setting that fits passes the same check."""
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    config = load_recipe("quickstart-cpu", ["train.mode=finetune", f"train.init_from={llama_1b}",
                                            "train.batch_size=64", "model.context_length=2048"])
    with pytest.raises(SLMError, match=r"refusing to start: finetune of .*Llama-3.2-1B needs about \d+\.\d GB "
                                       r"\(batch 64, context 2048\).*QLoRA.*train.force=true"):
        train(config, tmp_path / "run", progress=False)

    from slm_core.train.preflight import preflight

    preflight(load_recipe("quickstart-cpu", ["train.mode=lora", f"train.init_from={llama_1b}",
                                             "train.batch_size=1", "model.context_length=64"]))

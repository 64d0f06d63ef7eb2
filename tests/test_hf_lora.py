"""LoRA adapters cross the border to peft + transformers both ways, and train on real-shaped bases.

Out: an adapter trained here on a Hugging Face base (or on our own model exported with
save_hf_folder) applies in `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
adapter_dir)` with our logits, task_type CAUSAL_LM and the base recorded. In: an adapter peft
trained on the transformers model of the same base loads onto ours with transformers' logits.
(A LoRA run on a real-shaped base lowering the loss: tests/test_hf_train.py.)
"""

import json

import pytest
import torch
from hf_families import hf_model

from slm_core.config import LoRAConfig, ModelConfig
from slm_core.models.hf import save_hf_folder
from slm_core.models.load import load_model
from slm_core.models.lora import apply_lora, load_adapter, save_adapter
from slm_core.models.model import Transformer

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23, 7, 12]])


def _nonzero_adapters(model, seed: int = 3) -> None:
    """peft starts B at zero (a no-op adapter); random B makes a layout mistake visible."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)


def _base_folder(kind: str, folder):
    if kind == "native-llama":  # a model trained here, exported for transformers
        torch.manual_seed(0)
        model = Transformer(ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                                        context_length=64, vocab_size=256))
        save_hf_folder(model, None, folder)
    else:
        hf_model(kind).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["native-llama", "qwen2.5", "qwen3"])
def test_our_adapter_applies_in_peft_on_the_transformers_base(tmp_path, kind):
    base = _base_folder(kind, tmp_path / "base")
    ours = apply_lora(load_model(base).model, LoRAConfig(r=4, alpha=8, dropout=0.0, targets="all"))
    _nonzero_adapters(ours)
    save_adapter(ours, tmp_path / "adapter", base=str(base))
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert settings["task_type"] == "CAUSAL_LM" and settings["base_model_name_or_path"] == str(base.resolve())

    hf = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = ours.eval()(IDS)
        assert (theirs(IDS).logits - expected).abs().max() < 1e-4
    # and back: our own loader reads the transformers layout
    again = load_adapter(load_model(base).model, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(again(IDS), expected, atol=1e-5)


def test_an_adapter_trained_with_peft_on_transformers_loads_here(tmp_path):
    base = _base_folder("llama-3.2", tmp_path / "base")
    hf = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16,
                             target_modules=["q_proj", "v_proj", "down_proj"])
    theirs = peft.get_peft_model(hf, config)
    _nonzero_adapters(theirs)
    theirs.save_pretrained(tmp_path / "adapter")
    ours = load_adapter(load_model(base).model, tmp_path / "adapter")
    with torch.no_grad():
        assert (ours(IDS) - theirs.eval()(IDS).logits).abs().max() < 1e-4

"""QLoRA: LoRA over a frozen int8/int4 base. Gradients equal those of the float model holding the same
(rounded) weights, the base shrinks to about its quantized size, and a run trained with
lora.quantize_base=int4 lowers the loss and leaves an ordinary peft adapter that transformers applies
to the float Hugging Face base."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from hf_families import LLAMA2_CHAT, hf_model, tokenizer_copy

from slm_core.config import LoRAConfig, load_recipe
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.models.lora import apply_lora
from slm_core.models.model import merge_adapter
from slm_core.models.qlora import Int8Embedding, base_weight_bytes, dequantized_weight, quantize_base

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23, 7, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, targets="attention")  # MLPs and lm_head stay bare: int8/int4 only


def _random_b(model, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)


def _float_twin(quantized: nn.Module, fp: nn.Module) -> nn.Module:
    """`fp` with every weight replaced by the quantized model's dequantized values."""
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if hasattr(module, "scales") and not isinstance(module, Int8Embedding):
                fp.get_submodule(name).weight.copy_(dequantized_weight(module))
        table = quantized.embed_tokens
        fp.embed_tokens.weight.copy_(table.weight.float() * table.scales[:, None])
    return fp


@pytest.mark.parametrize("method,family", [("int4", "llama-3.2"), ("int8", "qwen2.5")])
def test_qlora_gradients_match_the_float_model_with_the_same_weights(tmp_path, monkeypatch, method, family):
    monkeypatch.setattr("slm_core.models.qlora.ROW_BLOCK", 48)  # big matrices go block by block: uneven blocks here
    hf_model(family, num_hidden_layers=2, scale=None).save_pretrained(tmp_path / "base")
    fp = load_model(tmp_path / "base").model
    quantized = quantize_base(copy.deepcopy(fp), method)
    twin = _float_twin(quantized, fp)
    models = []
    for base in (quantized, twin):
        torch.manual_seed(0)  # the same LoRA A init on both
        model = apply_lora(base, LORA)
        _random_b(model)
        loss = nn.functional.cross_entropy(model(IDS)[:, :-1].flatten(0, 1), IDS[:, 1:].flatten())
        loss.backward()
        models.append(model)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 4 * 2  # A and B, 4 projections, 2 layers
    for name in grads[0]:
        # layer 0's adapters get their gradient through every quantized layer above them
        assert torch.allclose(grads[0][name], grads[1][name], atol=2e-5, rtol=1e-3), name
    with pytest.raises(SLMError, match="not merged into its quantized base"):
        merge_adapter(models[0])


def test_the_quantized_base_holds_about_int4_bytes(tmp_path):
    # Llama-3.2-1B's proportions (GQA 4:1, tied, mlp 4x) at width 256: blocks dominate, like the real one
    hf_model("llama-3.2", hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2,
             head_dim=32, num_hidden_layers=4, vocab_size=2048, scale=None).save_pretrained(tmp_path / "base")
    model = load_model(tmp_path / "base").model
    fp32 = base_weight_bytes(model)
    block = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2)
    table = model.embed_tokens.weight.numel()
    quantize_base(model, "int4")
    expected = block * (0.5 + 8 / 64) + table * 1  # nibbles + fp32 scale and zero per 64; int8 table (tied head)
    held = base_weight_bytes(model)
    assert held < 1.05 * expected + 4 * 256 * 20, (held, expected)  # + norms and per-row scales
    assert held < 0.2 * fp32
    # the int8 table is lm_head's own tensor: stored once
    assert model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()


@pytest.fixture(scope="module")
def llama2_folder(tmp_path_factory):
    """A Llama-2-chat-shaped base with the real Llama 2 tokenizer (32k rows: the cheapest real vocabulary)."""
    folder = tokenizer_copy("llama-spm", tmp_path_factory.mktemp("llama2-chat"), LLAMA2_CHAT)
    hf_model("llama-2", vocab_size=32000, scale=None).save_pretrained(folder)
    return folder


@pytest.mark.slow  # ~25-45 s on 2 cores: a 32k-row output layer, evaluation and a checkpoint
def test_a_qlora_run_lowers_the_loss_and_its_adapter_loads_on_the_float_export(llama2_folder, tmp_path):
    from slm_core.run import runs
    from slm_core.train.loop import train

    config = load_recipe("lora-instructions-cpu", [
        f"train.init_from={llama2_folder}", "lora.quantize_base=int4", "data.max_chars=20000",
        "model.context_length=64", "train.max_steps=12", "train.eval_interval=12", "train.ckpt_interval=12",
        "train.batch_size=4", "train.eval_batches=2", "train.lr=0.03", "train.warmup_steps=0",
        "train.precision=fp32", "train.sample_tokens=2"])
    result = train(config, tmp_path / "run", progress=False)
    assert result["state"] == "finished"
    evals = [m for m in runs.read_metrics(tmp_path / "run") if m["kind"] == "eval"]
    # as much as LoRA on the float base does here (10.42 → 10.15 both): the output starts near uniform
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.15, evals
    adapter = tmp_path / "run" / "checkpoints" / "latest" / "adapter"
    settings = json.loads((adapter / "adapter_config.json").read_text())
    assert settings["task_type"] == "CAUSAL_LM" and settings["base_model_name_or_path"] == str(llama2_folder)

    ours = load_model(adapter.parent).model  # the float base + the adapter, unmerged
    hf = transformers.AutoModelForCausalLM.from_pretrained(llama2_folder, dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, adapter).eval()
    bare = transformers.AutoModelForCausalLM.from_pretrained(llama2_folder, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = ours(IDS)
        assert (theirs(IDS).logits - expected).abs().max() < 1e-4
        assert (bare(IDS).logits - expected).abs().max() > 1e-3  # the adapter does change the model


def test_quantize_base_is_a_checked_config_field():
    with pytest.raises(SLMError, match="lora.quantize_base='nf4' is invalid"):
        load_recipe("lora-instructions-cpu", ["lora.quantize_base=nf4"])

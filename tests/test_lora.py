"""LoRA through peft: only adapters train, adapters save small and reload exactly, merging keeps the
model's outputs, the KV-cache generation path works through the wrapper, bad targets are refused."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from slm_core.config import LoRAConfig, ModelConfig
from slm_core.errors import SLMError
from slm_core.models.lora import apply_lora, load_adapter, load_adapter_weights, save_adapter, trainable_summary
from slm_core.models.model import Transformer, base_transformer, merge_adapter
from slm_core.run.checkpoint import state_dict_for_save

pytest.importorskip("peft")

V = 97
FAMILIES = ["gpt2", "llama"]


def tiny_model(family: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    extra = {"n_kv_head": 2} if family == "llama" else {}
    return Transformer(ModelConfig(family=family, n_layer=2, n_head=4, d_model=64, context_length=32,
                                   vocab_size=V, **extra))


def train_a_little(model, steps: int = 4, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (4, 16), generator=g)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def base_state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapter_weights_train(family):
    model = tiny_model(family)
    before = base_state(model)
    peft_model = apply_lora(model, LoRAConfig(r=4, alpha=8, targets="all"))
    summary = trainable_summary(peft_model)
    lora_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    train_a_little(peft_model)

    base = base_transformer(peft_model)
    after = {n: p for n, p in base.state_dict().items() if "lora_" not in n}
    for name, value in before.items():  # peft renames base.weight → base_layer.weight
        stem, _, leaf = name.rpartition(".")
        key = name if name in after else f"{stem}.base_layer.{leaf}"
        assert torch.equal(after[key], value), name
    changed = [n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)  # every lora_A and lora_B moved
    assert summary["trainable"] == sum(p.numel() for p in lora_before.values())
    assert summary["trainable"] < 0.1 * summary["total"], summary
    print(f"\n{family}: trainable {summary['trainable']:,} of {summary['total']:,} "
          f"({summary['trainable_percent']:.2f}%)")


def test_targets_are_filtered_to_modules_that_exist():
    # GPT-2-family MLPs have up/down but no gate_proj: 'mlp' keeps the two that exist.
    peft_model = apply_lora(tiny_model("gpt2"), LoRAConfig(targets="mlp"))
    assert sorted(peft_model.peft_config["default"].target_modules) == ["down_proj", "up_proj"]
    with pytest.raises(SLMError, match=r"gate_proj.*(?s:.)*q_proj"):
        apply_lora(tiny_model("gpt2"), LoRAConfig(targets=["gate_proj", "w1"]))
    with pytest.raises(SLMError, match="tied"):
        apply_lora(tiny_model("llama"), LoRAConfig(targets=["q_proj", "lm_head"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_save_load_merge_round_trip(family, tmp_path):
    base = tiny_model(family)
    base_weights = copy.deepcopy(base.state_dict())
    peft_model = apply_lora(base, LoRAConfig(r=8, alpha=16, targets="all"))
    train_a_little(peft_model)
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        expected = peft_model(x)
    assert not torch.allclose(expected, Transformer(base.config).eval().requires_grad_(False)(x))

    adapter_dir = save_adapter(peft_model, tmp_path / "adapter")
    fresh = Transformer(base.config)
    fresh.load_state_dict(base_weights)
    reloaded = load_adapter(fresh, adapter_dir)
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)  # unmerged: bit-identical

    merged = merge_adapter(reloaded)
    assert type(merged) is Transformer and not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.lm_head.weight is merged.embed_tokens.weight  # tied embeddings survive the merge
    with torch.no_grad():
        assert torch.allclose(merged(x), expected, atol=1e-5)

    adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())
    save_file(state_dict_for_save(merged), str(tmp_path / "base.safetensors"))
    base_bytes = (tmp_path / "base.safetensors").stat().st_size
    assert adapter_bytes < 0.35 * base_bytes, (adapter_bytes, base_bytes)
    print(f"\n{family}: adapter dir {adapter_bytes:,} bytes, base weights {base_bytes:,} bytes")


def test_resume_loads_adapter_weights_into_a_fresh_lora_model(tmp_path):
    base = tiny_model("llama")
    base_weights = copy.deepcopy(base.state_dict())
    cfg = LoRAConfig(r=4, targets="attention")
    trained = apply_lora(base, cfg)
    train_a_little(trained)
    save_adapter(trained, tmp_path / "adapter")
    fresh = Transformer(base.config)
    fresh.load_state_dict(base_weights)
    resumed = apply_lora(fresh, cfg)
    load_adapter_weights(resumed, tmp_path / "adapter")
    x = torch.randint(0, V, (1, 12))
    resumed.eval()
    with torch.no_grad():
        assert torch.equal(resumed(x), trained(x))
    with pytest.raises(SLMError, match="lora.r"):
        load_adapter_weights(apply_lora(tiny_model("llama"), LoRAConfig(r=2, targets="attention")),
                             tmp_path / "adapter")
    with pytest.raises(SLMError, match="not a LoRA adapter folder"):
        load_adapter(tiny_model("llama"), tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_generation_works_through_the_peft_wrapper(family):
    from slm_core.infer.generate import generate_tokens

    peft_model = apply_lora(tiny_model(family), LoRAConfig(r=4, targets="all"))
    train_a_little(peft_model, steps=6)
    x = torch.randint(0, V, (1, 10))
    with torch.no_grad():
        full = peft_model(x)
        core = base_transformer(peft_model)
        core.setup_kv_cache(1, 32)
        prefill = peft_model(x[:, :6], input_pos=torch.arange(6))
        steps = [peft_model(x[:, i:i + 1], input_pos=torch.tensor([i])) for i in range(6, 10)]
        core.clear_kv_cache()
    cached = torch.cat([prefill] + steps, dim=1)
    assert torch.allclose(cached, full, atol=1e-5)
    prompt = x[0].tolist()
    unmerged = list(generate_tokens(peft_model, prompt, max_new_tokens=8, temperature=0))
    merged = list(generate_tokens(merge_adapter(peft_model), prompt, max_new_tokens=8, temperature=0))
    assert unmerged == merged and len(unmerged) == 8


def test_gradient_checkpointing_trains_adapters():
    model = tiny_model("llama")
    model.gradient_checkpointing = True
    peft_model = apply_lora(model, LoRAConfig(r=4, targets="all"))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    train_a_little(peft_model, steps=2)
    assert all(not torch.equal(p, before[n]) for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_lora_on_a_hugging_face_llama_converted_to_our_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_convert = pytest.importorskip("slm_core.models.hf", reason="slm_core.models.hf (helper Q) not there yet")
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")  # a random tiny model: nothing is downloaded
    model_config, state = hf_convert.from_hf(tmp_path / "hf")
    model = Transformer(model_config)
    model.load_state_dict(state, strict=False)
    model.eval()
    x = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        assert torch.allclose(model(x), hf_model(input_ids=x).logits, atol=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_lora(model, LoRAConfig(r=4, targets="all"))
    assert trainable_summary(peft_model)["trainable_percent"] < 20
    train_a_little(peft_model)
    with torch.no_grad():
        expected = peft_model(x)
    merged_model = merge_adapter(peft_model)
    merged = merged_model.state_dict()
    assert sorted(merged) == sorted(before)  # a plain Transformer again, same parameter names
    changed = {k for k in before if not torch.equal(merged[k], before[k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed)  # only the LoRA targets moved
    with torch.no_grad():
        assert torch.allclose(merged_model(x), expected, atol=1e-5)

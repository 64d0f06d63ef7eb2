"""Hugging Face interchange: our models load in transformers with the same logits, and back.

Real transformers classes, tiny random weights: an exported folder must load with
AutoModelForCausalLM (no custom code) and a transformers checkpoint must run in our Transformer.
"""

import json

import pytest
import torch

from slm_core.config import ModelConfig
from slm_core.errors import SLMError
from slm_core.models.hf import from_hf, hf_architecture, save_hf_folder
from slm_core.models.model import Transformer

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23, 7, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    settings = dict(n_layer=2, n_head=4, d_model=32, context_length=64, vocab_size=128)
    settings.update(overrides)
    model = Transformer(ModelConfig(**settings))
    with torch.no_grad():  # larger-than-init weights so a layout mistake cannot hide in tiny logits
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def ours(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


def hf_logits(folder, ids=IDS):
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits, hf


@pytest.mark.parametrize("overrides", [
    dict(family="llama", n_kv_head=4, tie_embeddings=True),
    dict(family="llama", n_kv_head=2, tie_embeddings=False),  # GQA, untied
    dict(family="llama", n_kv_head=1, rope_theta=500000.0, rope_scaling="linear", rope_scaling_factor=2.0),
    dict(family="llama", bias=True, rope_scaling="dynamic", rope_scaling_factor=2.0),
    dict(family="llama", qkv_bias=True, n_kv_head=2),  # Qwen2 shape
], ids=["llama-mha-tied", "llama-gqa-untied", "llama-mqa-linear-rope", "llama-bias-dynamic-rope", "qwen2"])
def test_llama_family_export_loads_in_transformers_with_same_logits(tmp_path, overrides):
    model = random_model(**overrides)
    save_hf_folder(model, None, tmp_path)
    logits, hf = hf_logits(tmp_path)
    expected = "Qwen2ForCausalLM" if overrides.get("qkv_bias") else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    assert torch.allclose(logits, ours(model), atol=1e-4), (logits - ours(model)).abs().max()


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_export_loads_in_transformers_with_same_logits(tmp_path, tied):
    model = random_model(family="gpt2", tie_embeddings=tied, d_ff=48)
    save_hf_folder(model, None, tmp_path)
    logits, hf = hf_logits(tmp_path)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert torch.allclose(logits, ours(model), atol=1e-4), (logits - ours(model)).abs().max()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and config["activation_function"] == "gelu_new"


def test_export_refuses_a_model_no_hf_class_fits_and_says_why():
    config = ModelConfig(family="gpt2", bias=False, n_layer=1, n_head=2, d_model=16, vocab_size=32)
    with pytest.raises(SLMError, match="GPT2LMHeadModel needs .*bias.*LlamaForCausalLM needs .*RMSNorm"):
        hf_architecture(config)


def tiny_hf(kind: str, **extra):
    torch.manual_seed(1)
    common = dict(vocab_size=128)
    if kind == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common, **extra)
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          **common, **extra)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          **common, **extra)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def load_ours(folder) -> Transformer:
    config, state = from_hf(folder)
    model = Transformer(config)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("kind,extra", [
    ("gpt2", {}),
    ("gpt2", {"tie_word_embeddings": False}),
    ("llama", {"tie_word_embeddings": False}),
    ("llama", {"tie_word_embeddings": True, "rope_theta": 5e5}),
    ("llama", {"attention_bias": True, "mlp_bias": False}),  # o_proj bias only: zero MLP biases fill in
    ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),  # plain RoPE within its length
    ("qwen2", {"tie_word_embeddings": True}),
])
def test_transformers_checkpoints_run_in_our_model_with_same_logits(tmp_path, kind, extra):
    hf = tiny_hf(kind, **extra)
    hf.save_pretrained(tmp_path)
    model = load_ours(tmp_path)
    with torch.no_grad():
        expected = hf(IDS).logits
    assert torch.allclose(ours(model), expected, atol=1e-4), (ours(model) - expected).abs().max()


def test_fixed_base_ntk_rope_is_exported_as_plain_rope_with_the_raised_base():
    from slm_core.models.hf import export_rope
    from slm_core.models.model import rope_inv_freq

    scaled = ModelConfig(family="llama", d_model=64, n_head=4, rope_scaling="dynamic", rope_scaling_factor=4.0)
    theta, scaling = export_rope(scaled)
    plain = ModelConfig(family="llama", d_model=64, n_head=4, rope_theta=theta)
    assert scaling is None and theta > scaled.rope_theta
    assert torch.allclose(rope_inv_freq(scaled), rope_inv_freq(plain), rtol=1e-6)


def test_sharded_checkpoints_are_read_through_their_index(tmp_path):
    hf = tiny_hf("llama", tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model = load_ours(tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(model), hf(IDS).logits, atol=1e-4)


def test_our_export_reads_back_identically(tmp_path):
    model = random_model(family="llama", n_kv_head=2, tie_embeddings=False)
    save_hf_folder(model, None, tmp_path)
    assert torch.equal(ours(load_ours(tmp_path)), ours(model))


def test_pickled_weights_are_refused_with_the_fix(tmp_path):
    tiny_hf("llama").config.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(SLMError, match="safetensors"):
        from_hf(tmp_path)


def test_unsupported_architectures_are_named_with_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(SLMError, match="architectures.*GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM"):
        from_hf(tmp_path)


def test_unknown_rope_scaling_is_refused_before_weights_load(tmp_path):
    raw = tiny_hf("llama").config.to_dict()
    raw.pop("rope_parameters", None)
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))  # no weights at all: refused from the config
    with pytest.raises(SLMError, match="rope_scaling.rope_type 'yarn'"):
        from_hf(tmp_path)


def test_tokenizer_files_are_written_for_autotokenizer(tmp_path):
    tokenizer_module = pytest.importorskip("slm_core.models.tokenizer")
    from slm_core.config import TokenizerConfig

    texts = ["the cat sat on the mat. " * 20, "a dog ran in the park! " * 20]
    tokenizer = tokenizer_module.build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), texts, progress=False)
    model = random_model(family="llama", vocab_size=tokenizer.n_vocab)
    save_hf_folder(model, tokenizer, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok.encode("the cat sat") == tokenizer.encode("the cat sat")
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eot_id

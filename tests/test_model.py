"""The one Transformer: causality, the KV cache, GQA, parameter counts, checkpointing, dropout,
RoPE scaling, bf16 autocast, and logits parity with Hugging Face GPT-2 and Llama.

Tiny random models on CPU. Weights are re-drawn larger than the initialisation (std 0.2) so a
layout mistake cannot hide inside near-zero logits.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from slm_core.config import ModelConfig, load_model_preset
from slm_core.models.model import Attention, Transformer, apply_rope, rope_cos_sin

FAMILIES = ["gpt2", "llama"]
VOCAB = 97


def tiny_config(family: str, **overrides) -> ModelConfig:
    settings = dict(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                    d_model=32, context_length=32, vocab_size=VOCAB)
    settings.update(overrides)
    return ModelConfig(**settings)


def randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_model(family: str, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return randomize(Transformer(tiny_config(family, **overrides)), seed=seed).eval()


def ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- causality and the KV cache ------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_changing_a_future_token_changes_no_earlier_logit(family):
    model = tiny_model(family)
    x = ids()
    changed = x.clone()
    changed[:, 12] = (changed[:, 12] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(x), model(changed)
    assert torch.equal(before[:, :12], after[:, :12])
    assert (before[:, 12:] - after[:, 12:]).abs().amax() > 1e-3  # and the change is seen from there on


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_incremental_decoding_equals_the_full_forward(family):
    model = tiny_model(family)
    x = ids(batch=2, length=20)
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        model.setup_kv_cache(batch_size=2)
        pieces = [model(x[:, :8], input_pos=torch.arange(0, 8))]  # prefill a chunk
        for pos in range(8, 12):  # then one token at a time
            pieces.append(model(x[:, pos:pos + 1], input_pos=torch.tensor([pos])))
        pieces.append(model(x[:, 12:20], input_pos=torch.arange(12, 20)))  # a second chunk after a prefix
        model.clear_kv_cache()
    cached = torch.cat(pieces, dim=1)
    assert cached.shape == full.shape
    assert (cached - full).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reused_cache_is_overwritten_by_a_new_prompt(family):
    model = tiny_model(family)
    a, b = ids(1, 10, seed=2), ids(1, 10, seed=3)
    with torch.no_grad():
        model.setup_kv_cache(batch_size=1)
        model(a, input_pos=torch.arange(10))
        second = model(b, input_pos=torch.arange(10))  # same cache, new prompt from position 0
        model.clear_kv_cache()
        assert (second - model(b)).abs().max().item() < 1e-4


# ---- attention -----------------------------------------------------------------------------

def reference_attention(attn: Attention, x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Causal attention written out by hand: softmax(q k^T / sqrt(D) + causal mask) v, with k and v
    heads repeated for grouped queries."""
    B, T, _ = x.shape
    H, KV, D = config.n_head, config.n_kv_head, config.head_dim
    q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, KV, D).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, KV, D).transpose(1, 2)
    if config.position == "rope":
        cos, sin = rope_cos_sin(config, torch.arange(T))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) / D ** 0.5  # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_equals_hand_written_reference(n_kv_head):
    config = tiny_config("llama", n_kv_head=n_kv_head)
    torch.manual_seed(0)
    attn = randomize(Attention(config))
    x = torch.randn(2, 16, config.d_model)
    cos, sin = rope_cos_sin(config, torch.arange(16))
    with torch.no_grad():
        ours = attn(x, (cos, sin), None)
        assert (ours - reference_attention(attn, x, config)).abs().max().item() < 1e-5


def test_gqa_with_duplicated_kv_heads_equals_multi_head_attention():
    gqa = tiny_model("llama", n_kv_head=2)
    mha = Transformer(tiny_config("llama", n_kv_head=4)).eval()
    state = gqa.state_dict()
    repeat = 4 // 2
    for name, tensor in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):  # (KV*D, d) -> (H*D, d), each head repeated
            kv_heads = tensor.view(2, -1, tensor.shape[-1])
            state[name] = kv_heads.repeat_interleave(repeat, dim=0).reshape(-1, tensor.shape[-1])
    mha.load_state_dict(state)
    x = ids()
    with torch.no_grad():
        assert (gqa(x) - mha(x)).abs().max().item() < 1e-5


# ---- sizes ---------------------------------------------------------------------------------

def meta_count(name: str) -> int:
    with torch.device("meta"):
        return Transformer(load_model_preset(name)).num_parameters()


def test_gpt2_124m_has_gpt2s_parameter_count():
    assert meta_count("gpt2-124m") == 124_439_808  # OpenAI GPT-2 small, tied embeddings


def test_llama_3_2_1b_has_the_published_parameter_count():
    count = meta_count("llama-3.2-1b")
    assert abs(count - 1_235_814_400) / 1_235_814_400 < 0.01  # transformers' count of Llama-3.2-1B
    assert abs(count - 1.24e9) / 1.24e9 < 0.01  # Meta's published "1.24B"


def test_untied_embeddings_add_an_output_matrix():
    tied = Transformer(tiny_config("llama")).num_parameters()
    untied = Transformer(tiny_config("llama", tie_embeddings=False)).num_parameters()
    assert untied - tied == VOCAB * 32


# ---- training behaviour --------------------------------------------------------------------

def grads_of(model: Transformer, x: torch.Tensor) -> dict:
    model.zero_grad(set_to_none=True)
    logits = model(x[:, :-1])
    F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    model = tiny_model(family).train()
    x = ids(2, 21)
    plain = grads_of(model, x)
    model.gradient_checkpointing = True
    checkpointed = grads_of(model, x)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_is_off_in_eval_mode(family):
    model = tiny_model(family, dropout=0.3)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))  # and it is really on in training


def test_rope_linear_scaling_with_factor_one_changes_nothing():
    plain = tiny_model("llama")
    scaled = Transformer(tiny_config("llama", rope_scaling="linear", rope_scaling_factor=1.0)).eval()
    scaled.load_state_dict(plain.state_dict())
    stretched = Transformer(tiny_config("llama", rope_scaling="linear", rope_scaling_factor=2.0)).eval()
    stretched.load_state_dict(plain.state_dict())
    x = ids()
    with torch.no_grad():
        assert torch.equal(plain(x), scaled(x))
        assert (plain(x) - stretched(x)).abs().max() > 1e-3  # a real factor does change positions


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_forward_runs_on_cpu(family):
    model = tiny_model(family)
    x = ids()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    with torch.no_grad():
        full = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    # bf16 keeps ~3 significant digits: the same predictions, roughly the same logits.
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


# ---- parity with Hugging Face --------------------------------------------------------------
# The weight mapping below is the test's own, written from the transformers source layout, so
# it checks our model against an independent reading of the two architectures.

def gpt2_state_from_hf(hf_state: dict, n_layer: int) -> dict:
    """transformers GPT2LMHeadModel state dict -> our names. GPT-2's Conv1D stores weights as
    (in, out), the transpose of nn.Linear; c_attn packs q, k, v along its output."""
    ours = {"embed_tokens.weight": hf_state["transformer.wte.weight"],
            "embed_positions.weight": hf_state["transformer.wpe.weight"],
            "norm.weight": hf_state["transformer.ln_f.weight"], "norm.bias": hf_state["transformer.ln_f.bias"]}
    for i in range(n_layer):
        hf, me = f"transformer.h.{i}.", f"layers.{i}."
        for a, b in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            ours[me + b + ".weight"], ours[me + b + ".bias"] = hf_state[hf + a + ".weight"], hf_state[hf + a + ".bias"]
        q, k, v = hf_state[hf + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = hf_state[hf + "attn.c_attn.bias"].chunk(3)
        for proj, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            ours[f"{me}self_attn.{proj}.weight"], ours[f"{me}self_attn.{proj}.bias"] = w, b
        for hf_name, name in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                              ("mlp.c_proj", "mlp.down_proj")):
            ours[me + name + ".weight"] = hf_state[hf + hf_name + ".weight"].t()
            ours[me + name + ".bias"] = hf_state[hf + hf_name + ".bias"]
    ours["lm_head.weight"] = ours["embed_tokens.weight"]
    return ours


def llama_state_from_hf(hf_state: dict) -> dict:
    """transformers LlamaForCausalLM state dict -> our names: the same names without 'model.'."""
    ours = {name.removeprefix("model."): tensor for name, tensor in hf_state.items()
            if not name.endswith("rotary_emb.inv_freq")}
    ours.setdefault("lm_head.weight", ours["embed_tokens.weight"])
    return ours


def hf_logits(hf_model, x):
    with torch.no_grad():
        return hf_model(input_ids=x).logits


def test_logits_match_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    torch.manual_seed(0)
    hf = randomize(transformers.GPT2LMHeadModel(hf_config)).eval()
    ours = Transformer(tiny_config("gpt2")).eval()
    ours.load_state_dict(gpt2_state_from_hf(hf.state_dict(), 2))
    x = ids(2, 32)
    assert (ours(x) - hf_logits(hf, x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("tied,n_kv_head", [(True, 2), (False, 4)])
def test_logits_match_hugging_face_llama(tied, n_kv_head):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=n_kv_head,
                                         max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                                         attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(hf_config)).eval()
    ours = Transformer(tiny_config("llama", n_kv_head=n_kv_head, d_ff=64, tie_embeddings=tied)).eval()
    ours.load_state_dict(llama_state_from_hf(hf.state_dict()))
    x = ids(2, 32)
    assert (ours(x) - hf_logits(hf, x)).abs().max().item() < 1e-4


def test_logits_match_hugging_face_llama_with_linear_rope_scaling():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                         rms_norm_eps=1e-5, tie_word_embeddings=True,
                                         rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(hf_config)).eval()
    config = dataclasses.replace(tiny_config("llama", d_ff=64), rope_scaling="linear", rope_scaling_factor=2.0)
    ours = Transformer(config).eval()
    ours.load_state_dict(llama_state_from_hf(hf.state_dict()))
    x = ids(2, 32)
    assert (ours(x) - hf_logits(hf, x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("scaling", ["linear", "dynamic"])
def test_cached_decoding_equals_full_forward_with_rope_scaling(scaling):
    torch.manual_seed(0)
    config = ModelConfig(family="llama", n_layer=2, n_head=4, d_model=32, context_length=32, vocab_size=97,
                         rope_scaling=scaling, rope_scaling_factor=2.0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        x = torch.randint(0, 97, (1, 32))
        full = model(x)
        model.setup_kv_cache(1, 32)
        pieces = [model(x[:, :8], input_pos=torch.arange(8))]
        pieces += [model(x[:, t:t + 1], input_pos=torch.tensor([t])) for t in range(8, 32)]
    assert (torch.cat(pieces, 1) - full).abs().max() < 1e-4

"""Quantization: error bounds of the formats, accuracy of quantized models, artifacts that reload
exactly from their metadata, KV-cache generation, and the side-by-side report."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from slm_core.config import ModelConfig, RunConfig
from slm_core.errors import SLMError
from slm_core.infer.generate import generate_tokens
from slm_core.models import load as L
from slm_core.models import quantized as Q
from slm_core.models.model import Transformer
from slm_core.post import quantize as QR


def tiny(family="llama", **overrides) -> Transformer:
    torch.manual_seed(0)
    settings = dict(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None, d_model=64,
                    context_length=64, vocab_size=160)
    settings.update(overrides)
    return Transformer(ModelConfig(**settings)).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


IDS = torch.randint(0, 160, (2, 24), generator=torch.Generator().manual_seed(1))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_int8_error_is_at_most_half_a_step_per_element():
    w = torch.randn(37, 80) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different ranges
    w[3, 5] = 40.0  # an outlier only widens its own row's step
    q, scales = Q.quantize_int8(w)
    assert q.dtype == torch.int8 and scales.shape == (37,)
    error = (w - Q.dequantize_int8(q, scales)).abs()
    assert torch.all(error <= scales[:, None] / 2 * (1 + 1e-6))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_at_most_half_a_step_per_group(group_size):
    w = torch.randn(48, 200)  # 200 is not a multiple of any group: padded with zeros
    packed, scales, zeros = Q.quantize_int4(w, group_size)
    padded = -(-200 // group_size) * group_size
    assert packed.dtype == torch.uint8 and packed.shape == (48, padded // 2)  # two nibbles per byte
    assert scales.shape == zeros.shape == (48, padded // group_size)
    error = (w - Q.dequantize_int4(packed, scales, zeros, 200)).abs()
    step = scales.repeat_interleave(group_size, dim=1)[:, :200]
    assert torch.all(error <= step / 2 + 1e-6)


def test_nibble_packing_round_trips():
    values = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    assert torch.equal(Q.unpack_nibbles(Q.pack_nibbles(values)), values)
    assert int(Q.pack_nibbles(torch.tensor([[3, 10]]))[0, 0]) == 3 | (10 << 4)  # low nibble = even column


# Relative logit error (norm of the difference / norm of fp32 logits) on random-weight tiny models;
# measured ~0.01 (int8), ~0.02 (int8-dynamic: activations are quantized too), ~0.04-0.07 (int4).
BOUNDS = {"int8": 0.03, "int8-dynamic": 0.06, "int4": 0.15}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", Q.METHODS)
def test_quantized_logits_stay_close_to_fp32(family, method):
    model = tiny(family)
    reference = logits(model, IDS)
    quantized = Q.quantize_model(copy.deepcopy(model), method, group_size=32)
    assert relative_error(logits(quantized, IDS), reference) < BOUNDS[method]


def test_cpu_kernels_agree_with_the_plain_dequantize_path(monkeypatch):
    for method in ("int8", "int4"):
        quantized = Q.quantize_model(tiny(), method, group_size=32)
        fast = logits(quantized, IDS)
        monkeypatch.setattr(Q, "USE_CPU_KERNELS", False)
        plain = logits(quantized, IDS)
        monkeypatch.setattr(Q, "USE_CPU_KERNELS", True)
        assert relative_error(fast, plain) < 0.02  # the kernels take bf16 activations


def test_odd_shapes_fall_back_safely():
    # in=40 (not a multiple of 16: the int8 kernel would crash), vocab 100 (not a multiple of 16 for int4)
    model = tiny("llama", d_model=40, n_head=4, n_kv_head=2, d_ff=72, vocab_size=100)
    ids = IDS % 100
    for method in Q.METHODS:
        quantized = Q.quantize_model(copy.deepcopy(model), method, group_size=32)
        assert relative_error(logits(quantized, ids), logits(model, ids)) < BOUNDS[method]


@pytest.mark.parametrize("method", Q.METHODS)
@pytest.mark.parametrize("tied", [True, False])
def test_saved_artifact_reloads_with_identical_logits_from_its_metadata(tmp_path, method, tied):
    model = tiny(tie_embeddings=tied)
    quantized = Q.quantize_model(copy.deepcopy(model), method, group_size=64)
    out = Q.save_quantized(quantized, RunConfig(model=model.config), None, tmp_path / "q", source="runs/demo")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "lineage.json", "model.safetensors", "quantization.json"]
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["method"] == method and meta["group_size"] == (64 if method == "int4" else None)
    assert meta["source"] == "runs/demo" and meta["tied_embeddings"] is tied
    loaded = L.load_quantized(out)
    assert loaded.kind == "quantized" and loaded.model.quantization["method"] == method
    assert torch.equal(logits(loaded.model, IDS), logits(quantized, IDS))


def test_saving_a_float_model_quantizes_on_the_fly_and_leaves_it_untouched(tmp_path):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Q.save_quantized(model, model.config, None, tmp_path / "a", method="int4", group_size=32)
    Q.save_quantized(Q.quantize_model(copy.deepcopy(model), "int4", 32), model.config, None, tmp_path / "b")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_loader_opens_quantized_artifacts(tmp_path):
    from slm_core.models.load import load_model

    model = tiny()
    Q.save_quantized(model, model.config, None, tmp_path / "q8", method="int8")
    loaded = load_model(tmp_path / "q8")
    assert loaded.kind == "quantized" and Q.is_quantized(loaded.model)


def test_files_are_about_a_quarter_and_an_eighth_of_fp32():
    model = tiny(d_model=128, vocab_size=512)
    fp32 = QR.weights_file_bytes(model)
    assert QR.weights_file_bytes(Q.quantize_model(copy.deepcopy(model), "int8")) < 0.3 * fp32
    assert QR.weights_file_bytes(Q.quantize_model(copy.deepcopy(model), "int4", 64)) < 0.22 * fp32


@pytest.mark.parametrize("method", Q.METHODS)
def test_kv_cache_decoding_matches_the_full_forward_on_quantized_models(method):
    model = Q.quantize_model(tiny(), method, group_size=32)
    ids = IDS[:1, :12]
    full = logits(model, ids)[0]
    model.setup_kv_cache(1, 64)
    with torch.no_grad():
        prefill = model(ids[:, :8], input_pos=torch.arange(8))[0]
        steps = [model(ids[:, i:i + 1], input_pos=torch.tensor([i]))[0, 0] for i in range(8, 12)]
    model.clear_kv_cache()
    cached = torch.cat([prefill, torch.stack(steps)])
    assert relative_error(cached, full) < 0.02
    assert len(list(generate_tokens(model, [1, 2, 3], 10, temperature=0.8, seed=0))) == 10


def test_bad_requests_are_refused_with_the_fix():
    with pytest.raises(SLMError, match="int8, int4, int8-dynamic"):
        Q.quantize_model(tiny(), "int3")
    with pytest.raises(SLMError, match="group size"):
        Q.quantize_model(tiny(), "int4", group_size=48)
    with pytest.raises(SLMError, match="already quantized"):
        Q.quantize_model(Q.quantize_model(tiny(), "int8"), "int4")


def train_briefly(model, steps=40):
    """A few optimizer steps on a noisy bigram chain, so the model has real structure to lose."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    tokens = [0]
    for noise in torch.rand(3000, generator=g).tolist():
        tokens.append((7 * tokens[-1] + 3) % vocab if noise < 0.8 else int(torch.randint(vocab, (1,), generator=g)))
    data = torch.tensor(tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on a busy pair
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 33, (8,), generator=g)
        batch = torch.stack([data[s:s + 33] for s in starts])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval(), torch.stack([data[i:i + 33] for i in range(2000, 2600, 33)])


def test_report_compares_size_quality_and_speed_side_by_side():
    model, windows = train_briefly(tiny())
    quantized = {m: Q.quantize_model(copy.deepcopy(model), m, 32) for m in Q.METHODS}
    rows = QR.quantization_report(model, quantized, windows, new_tokens=8, repeats=1)
    assert [r["model"] for r in rows] == ["fp32", "int8", "int4", "int8-dynamic"]
    base, int8, int4 = rows[0], rows[1], rows[2]
    assert base["size_ratio"] == 1.0 and base["speedup"] == 1.0
    assert int8["size_ratio"] < 0.35 and int4["size_ratio"] < int8["size_ratio"]
    assert all(r["tokens_per_sec"] > 0 and r["memory_mb"] > 0 for r in rows)
    assert base["ppl"] < 40  # it learned the chain (160 tokens: 160 untrained)...
    assert int8["ppl"] < base["ppl"] * 1.05 and int4["ppl"] < base["ppl"] * 1.3  # ...and quantization keeps it
    assert QR.method_label(int4_model := quantized["int4"]) == "int4-g32" and int4_model is not model
    assert "int8-dynamic" in QR.format_report(rows)


def test_int4_kernel_layout_replaces_the_portable_copy_and_gives_it_back_exactly(tmp_path):
    model = tiny(d_model=128, n_head=4)
    expected, _ = Q.quantize_state(model, "int4", 32)
    quantized = Q.quantize_model(copy.deepcopy(model), "int4", 32)
    before = QR.model_memory_bytes(quantized)
    nibble_bytes = sum(m.weight.numel() for m in quantized.modules() if isinstance(m, Q.WeightOnlyInt4Linear))
    reference = logits(quantized, IDS)  # builds the CPU kernel layout, drops the nibble buffer
    layer = quantized.layers[0].mlp.up_proj
    # only the kernel's bf16 copy of scales/zeros is added, not a second copy of the weights
    assert layer.weight.numel() == 0 and QR.model_memory_bytes(quantized) - before < nibble_bytes / 2
    tensors, _ = Q.quantized_state(quantized)
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())
    assert torch.equal(quantized.state_dict()["layers.0.mlp.up_proj.weight"], expected["layers.0.mlp.up_proj.weight"])
    Q.save_quantized(quantized, model.config, None, tmp_path / "q")
    assert torch.equal(logits(L.load_quantized(tmp_path / "q").model, IDS), reference)

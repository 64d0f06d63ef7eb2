"""Optimizers and schedules: Muon for hidden matrices with AdamW for the rest, warmup-stable-decay."""

import pytest
import torch

from slm_core.config import ModelConfig, TrainConfig
from slm_core.errors import SLMError
from slm_core.models.model import Transformer
from slm_core.train.optim import CombinedOptimizer, Muon, build_optimizer, lr_at, set_lr


def tiny_model(family="llama"):
    torch.manual_seed(0)
    return Transformer(ModelConfig(family=family, n_layer=2, n_head=2, d_model=32, context_length=16, vocab_size=50))


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
    assert lr_at(5, cfg) == pytest.approx(5e-4)  # warmup
    assert lr_at(10, cfg) == lr_at(50, cfg) == lr_at(80, cfg) == pytest.approx(1e-3)  # stable until step 80
    assert lr_at(90, cfg) == pytest.approx(1e-3 - 0.9e-3 * 0.5)  # halfway down the decay
    assert lr_at(100, cfg) == pytest.approx(1e-4)


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(opt, CombinedOptimizer)
    muon_ids = {id(p) for g in opt.named["muon"].param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in opt.named["adamw"].param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i].split(".")[-2] for i in muon_ids} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"}
    assert "embed_tokens.weight" in {names[i] for i in adamw_ids}  # tied with lm_head: once, on AdamW
    assert not muon_ids & adamw_ids and len(muon_ids | adamw_ids) == len(list(model.parameters()))


def test_our_muon_step_equals_torch_muon_and_fp32_newton_schulz_stays_close():
    torch.manual_seed(0)
    start = torch.randn(48, 24)
    weights = [torch.nn.Parameter(start.clone()) for _ in range(3)]
    ref = torch.optim.Muon([weights[0]], lr=0.02, adjust_lr_fn="match_rms_adamw")
    same = Muon([weights[1]], lr=0.02, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.bfloat16)
    fp32 = Muon([weights[2]], lr=0.02, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)
    for _ in range(3):
        grad = torch.randn(48, 24)
        for w, opt in zip(weights, (ref, same, fp32)):
            w.grad = grad.clone()
            opt.step()
    assert torch.equal(weights[0], weights[1])
    moved = (weights[0] - start).norm()
    assert (weights[2] - weights[0]).norm() < 0.05 * moved  # bf16 rounding is the only difference
    fp32.load_state_dict(ref.state_dict())  # the state is torch's: checkpoints are interchangeable


def test_muon_orthogonalises_same_shaped_matrices_together_with_the_same_result():
    """The batched Newton-Schulz (one stack per shape, tall matrices turned wide) moves every weight as
    the one-matrix-at-a-time iteration does: a 2-layer SwiGLU model has 128x32 / 32x128 / 32x32 / 32x64
    hidden matrices, several of each."""
    from slm_core.train.optim import newton_schulz

    model = tiny_model()
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    assert len({tuple(p.shape) for p in hidden}) < len(hidden)  # shapes repeat: batches form
    opt = Muon(hidden, lr=0.02, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32, nesterov=False)
    model(torch.randint(0, 50, (2, 16))).float().logsumexp(-1).mean().backward()
    before = [p.detach().clone() for p in hidden]
    expected = []
    for p, w in zip(hidden, before):  # torch's update, one matrix at a time (zero momentum: buf = (1-m) grad)
        update = newton_schulz(p.grad * 0.05, 5, (3.4445, -4.775, 2.0315), 1e-7, torch.float32)
        scale = 0.02 * 0.2 * max(p.shape) ** 0.5
        expected.append(w * (1 - 0.02 * 0.1) - scale * update)
    opt.step()
    for p, want, w in zip(hidden, expected, before):
        assert not torch.equal(p, w)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_muon_lr_scales_only_muon_groups_and_state_round_trips():
    model = tiny_model("gpt2")
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=4e-3), torch.device("cpu"))
    set_lr(opt, 5e-4)
    assert {g["lr"] for g in opt.named["adamw"].param_groups} == {5e-4}
    assert [g["lr"] for g in opt.named["muon"].param_groups] == [pytest.approx(2e-3)]
    x = torch.randint(0, 50, (2, 16))
    model(x).float().logsumexp(-1).mean().backward()
    opt.step()
    state = opt.state_dict()
    again = build_optimizer(tiny_model("gpt2"), TrainConfig(optimizer="muon"), torch.device("cpu"))
    again.load_state_dict(state)
    adamw_only = build_optimizer(tiny_model("gpt2"), TrainConfig(), torch.device("cpu"))
    with pytest.raises((SLMError, ValueError, KeyError)):
        adamw_only.load_state_dict(state)


def test_config_refuses_unknown_optimizer_and_schedule():
    for field, value in (("optimizer", "sgd"), ("schedule", "step")):
        with pytest.raises(SLMError, match=f"train.{field}"):
            TrainConfig(**{field: value})


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_memory_estimate_counts_each_optimizers_state(kind):
    from slm_core.models.estimate import training_memory

    model = tiny_model()
    opt = build_optimizer(model, TrainConfig(optimizer=kind), torch.device("cpu"))
    model(torch.randint(0, 50, (2, 16))).float().logsumexp(-1).mean().backward()
    opt.step()
    optimizers = getattr(opt, "optimizers", [opt])
    state_bytes = sum(t.numel() * t.element_size() for o in optimizers for s in o.state.values()
                      for t in s.values() if torch.is_tensor(t) and t.dim() > 0)  # scalar step counters aside
    est = training_memory(model.config, 2, device="cpu", optimizer_kind=kind)
    assert est["optimizer_mb"] * 2**20 == pytest.approx(state_bytes, rel=0.01)

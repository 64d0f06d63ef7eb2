"""Speculative decoding (slm_core.infer.speculative): the target's greedy text token for token, the target's sampling
distribution at temperature > 0, a draft with another tokenizer refused, and `--draft auto` finding a shrunk
student of the model."""

import copy

import pytest
import torch
from scipy.stats import chisquare

from slm_core.cli import main
from slm_core.errors import SLMError
from slm_core.infer.decoder import Decoder
from slm_core.infer.engine import Engine, decode_one
from slm_core.infer.generate import generate_tokens
from slm_core.infer.sampling import SamplingParams
from slm_core.infer.speculative import MAX_K, PROBE_EVERY, Speculator, check_draft, find_shrunk_draft
from slm_core.models.load import load_model
from slm_core.models.tokenizer import build_char

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def target(tiny_char_run):
    loaded = load_model(tiny_char_run)
    loaded.model.float().eval()
    return loaded


def _noisy(model, scale: float):
    """`model` with seeded noise on every weight: it agrees with `model` often but not always."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * p.std() * scale)
    return model


@pytest.fixture(scope="module")
def draft(target):
    """A draft whose rounds end in both acceptances and rejections."""
    return _noisy(target.model, 0.5)


def _greedy(model, ids, n, draft=None, stats=None, penalty=1.0):
    return list(generate_tokens(model, ids, n, temperature=0.0, repetition_penalty=penalty, one_row_half=False,
                                draft=draft, spec_stats=stats))


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_the_target_alone(target, draft, penalty):
    ids = target.tokenizer.encode(PROMPT)
    n = 100  # past the 64-position context: the window slides mid-reply
    stats: dict = {}
    alone = _greedy(target.model, ids, n, penalty=penalty)
    drafted = _greedy(target.model, ids, n, draft, stats, penalty)
    assert drafted == alone
    spec = stats["speculator"].stats()
    assert 0 < spec["draft_accept_rate"] < 1  # both paths of a round ran
    assert spec["draft_tokens"] > 0


def test_k_climbs_fast_when_drafts_are_kept_and_drafting_stops_when_they_are_not(draft):
    """k from the measured acceptance and costs: a cheap draft (a tenth of a pass per token) whose tokens are all kept
    reaches MAX_K within two rounds, and a shorter k once it keeps about 4 of 5; a draft as costly as a pass whose
    tokens are rejected drafts nothing, as plain decoding would."""
    spec = Speculator(draft, 64, one_row_half=False)
    for _ in range(2):
        spec._adapt(spec.k, spec.k, draft_s=0.001 * spec.k, verify_s=0.01)
    assert spec.k == MAX_K
    for _ in range(5):  # 4 kept of 8, then a rejection: a shorter round pays better
        spec._adapt(4, 8, draft_s=0.008, verify_s=0.01)
    assert 1 < spec.k < MAX_K
    for _ in range(4):  # the cheap rounds' costs fade out as these come in
        spec._adapt(0, max(spec.k, 1), draft_s=0.01 * max(spec.k, 1), verify_s=0.01)
    assert spec.k == 0


def test_a_useless_draft_falls_back_to_plain_steps_with_the_same_text(target):
    """A draft as costly as the target that never agrees with it: after a round, rounds are plain target steps (k 0)
    with a one-token probe every PROBE_EVERY rounds, and the text is still the target's own."""
    ids, n = target.tokenizer.encode(PROMPT), 40
    useless = _noisy(target.model, 20.0)
    stats: dict = {}
    assert _greedy(target.model, ids, n, useless, stats) == _greedy(target.model, ids, n)
    spec = stats["speculator"]
    assert spec.rounds < n // 2 and spec.drafted < n // 2 and spec.rounds >= (n - 10) // PROBE_EVERY


def test_engine_drafts_for_a_lone_request_and_batches_several(target, draft):
    ids = target.tokenizer.encode(PROMPT)
    alone = _greedy(target.model, ids, 40)
    params = SamplingParams(40, temperature=0.0)
    engine = Engine(target.model, target.tokenizer, slots=2, dtype="fp32", draft=draft)
    try:
        request = engine.submit(ids, params, stop_ids=())
        assert list(request) == alone
        assert request.seq.drafted > 0
        stats: dict = {}
        "".join(engine.stream(ids, params, stats=stats, stop_ids=()))
        # Whether this reply drafts at all follows the measured draft/verify costs (this draft is as big as its
        # target), so the figures are checked for what they report, not for a value.
        if stats.get("draft_tokens"):
            assert 0 <= stats["draft_accept_rate"] <= 1 and stats["speedup"] > 0
        pair = [engine.submit(ids, params, stop_ids=()) for _ in range(2)]  # batched or drafted: the same tokens
        assert [list(r) for r in pair] == [alone, alone]
    finally:
        engine.close()
    assert "draft" in engine.description


def _exact_two_tokens(model, ids, temperature, top_k) -> torch.Tensor:
    """The target's own joint distribution of the first two new tokens (V, V), from full forwards: no sampling."""
    def probs(logits):
        logits = logits / temperature
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        return torch.softmax(logits.masked_fill(logits < kth, -float("inf")), dim=-1)

    with torch.no_grad():
        first = probs(model(torch.tensor([ids]))[0, -1])  # (V,)
        V = first.numel()
        rows = torch.cat((torch.tensor(ids).expand(V, -1), torch.arange(V)[:, None]), dim=1)
        second = probs(model(rows)[:, -1])  # (V, V): row t1
    return first[:, None] * second


@pytest.mark.slow
def test_sampling_keeps_the_target_distribution(target):
    """1,200 seeded three-token replies (top-k 3, so ~9 cells); the joint histogram of the first two tokens against
    the target's exact distribution. Tolerance: no token outside the target's support; a chi-square test at
    p > 0.001 over cells expected >= 5 times (rarer cells pooled), and total variation < 0.08 (the sampling noise of
    1,200 draws over 9 cells is ~0.035). The draft's own distribution is further than that from the target's, so a
    draft leaking through would fail."""
    ids, n, temperature, top_k = target.tokenizer.encode(PROMPT), 1200, 1.0, 3
    draft = _noisy(target.model, 1.0)
    exact = _exact_two_tokens(target.model, ids, temperature, top_k).flatten()
    assert 0.5 * (exact - _exact_two_tokens(draft, ids, temperature, top_k).flatten()).abs().sum() > 0.12
    counts = torch.zeros_like(exact)
    speculator = Speculator(draft, 64, one_row_half=False)
    decoder = Decoder(target.model, slots=1, max_len=64, one_row_half=False)
    V, threads = target.model.config.vocab_size, torch.get_num_threads()
    torch.set_num_threads(1)  # a 1-layer model: one thread is faster, and not slowed by a busy machine
    try:
        for seed in range(n):
            speculator.k = 4
            tokens = list(decode_one(decoder, ids, SamplingParams(3, temperature=temperature, top_k=top_k, seed=seed),
                                     (), speculator))
            counts[tokens[0] * V + tokens[1]] += 1
    finally:
        torch.set_num_threads(threads)
    assert 0.1 < speculator.accepted / speculator.drafted < 0.95  # rejections happened, and acceptances
    assert counts[exact == 0].sum() == 0
    tv = 0.5 * (counts / n - exact).abs().sum()
    assert tv < 0.08, f"total variation {tv:.3f}"
    common, rare = exact * n >= 5, (exact * n < 5) & (exact > 0)
    observed, expected = counts[common], exact[common] * n
    if rare.any():
        observed = torch.cat((observed, counts[rare].sum()[None]))
        expected = torch.cat((expected, exact[rare].sum()[None] * n))
    assert chisquare(observed.numpy(), expected.numpy() * n / expected.sum().item()).pvalue > 1e-3


def test_a_draft_with_another_tokenizer_is_refused(target, draft):
    other = build_char(["a different corpus, other characters: qzx"])
    with pytest.raises(SLMError, match="does not share the model's tokenizer"):
        check_draft(target.tokenizer, other, target.model.config.vocab_size, other.n_vocab, "other")
    check_draft(target.tokenizer, target.tokenizer, 10, 10, "same")  # the same tokenizer passes


@pytest.mark.slow
def test_draft_auto_finds_the_shrunk_student(tiny_char_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["generate", str(tiny_char_run), "--draft", "auto", "--runs-dir", str(runs)]) != 0
    assert "found no run" in capsys.readouterr().err
    assert main(["shrink", str(tiny_char_run), "--layers", "1", "--steps", "2", "--name", "small", "--quiet",
                 "--runs-dir", str(runs), "--set", "model.context_length=64", "--set", "train.eval_interval=2",
                 "--set", "train.ckpt_interval=2", "--set", "train.eval_batches=1",
                 "--set", "train.sample_tokens=0"]) == 0
    assert find_shrunk_draft(str(tiny_char_run), runs)["name"] == "small"
    capsys.readouterr()
    assert main(["generate", str(tiny_char_run), "--draft", "auto", "--runs-dir", str(runs), "--temperature", "0",
                 "--max-new-tokens", "30", "--dtype", "fp32", "--raw"]) == 0
    out = capsys.readouterr()
    assert "draft: small (auto: 1 layer shrunk from" in out.err
    assert "draft acceptance" in out.err and "speed-up" in out.err

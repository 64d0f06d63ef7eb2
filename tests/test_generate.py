"""Generation: the cached decoder agrees with the full model, and the sampling knobs do what they say."""

import pytest
import torch

from slm_core.config import ModelConfig, RunConfig, TokenizerConfig
from slm_core.infer.generate import generate_tokens, sample_next, stream_text
from slm_core.infer.sampling import clean
from slm_core.models.load import LoadedModel
from slm_core.models.model import Transformer


def tiny(family: str, context: int = 32) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=32, context_length=context, vocab_size=64)
    return Transformer(config).eval()


def greedy_reference(model, prompt, n):
    """Greedy decoding by re-running the whole sequence each step (no cache)."""
    tokens = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([tokens[-model.config.context_length:]]))[0, -1]
        tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_cached_generation_matches_full_forward(family):
    model = tiny(family)
    prompt = [1, 5, 9, 3]
    assert list(generate_tokens(model, prompt, 20, temperature=0)) == greedy_reference(model, prompt, 20)


def test_generation_continues_past_the_context_window():
    model = tiny("llama", context=16)
    out = list(generate_tokens(model, [1, 2, 3], 40, temperature=0.9, seed=3))
    assert len(out) == 40


def test_seed_makes_sampling_reproducible_and_top_k_1_is_greedy():
    model = tiny("gpt2")
    prompt = [4, 8, 15]
    a = list(generate_tokens(model, prompt, 15, temperature=1.0, seed=42))
    b = list(generate_tokens(model, prompt, 15, temperature=1.0, seed=42))
    assert a == b
    assert list(generate_tokens(model, prompt, 15, temperature=1.0, top_k=1, seed=7)) == \
        list(generate_tokens(model, prompt, 15, temperature=0))


def test_stop_token_ends_generation_and_is_not_emitted():
    model = tiny("gpt2")
    prompt = [4, 8, 15]
    greedy = list(generate_tokens(model, prompt, 10, temperature=0))
    stopped = list(generate_tokens(model, prompt, 10, temperature=0, stop_ids=[greedy[3]]))
    assert stopped == greedy[:greedy.index(greedy[3])]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([3.0, 2.9, -5.0, -6.0])  # the first two hold almost all the mass
    generator = torch.Generator().manual_seed(0)
    draws = {sample_next(logits.clone(), torch.empty(0, dtype=torch.long), 1.0, 0, 0.9, 1.0, generator)
             for _ in range(200)}
    assert draws == {0, 1}


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([2.0, 1.9, 0.0])
    generator = torch.Generator().manual_seed(0)
    seen = torch.tensor([0])
    assert sample_next(logits.clone(), seen, 0.0, 0, 1.0, 1.0, generator) == 0
    assert sample_next(logits.clone(), seen, 0.0, 0, 1.0, 1.5, generator) == 1


def test_stream_text_equals_decoding_the_generated_ids():
    from slm_core.models.tokenizer import build_tokenizer

    text = "héllo wörld — 你好 🙂 " * 20
    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), [text], progress=False)
    torch.manual_seed(0)
    config = ModelConfig(family="gpt2", n_layer=1, n_head=2, d_model=16, context_length=32,
                         vocab_size=tokenizer.n_vocab)
    loaded = LoadedModel(Transformer(config).eval(), tokenizer, RunConfig(model=config), path=None)
    stats = {}
    deltas = list(stream_text(loaded, "héllo", max_new_tokens=30, temperature=1.0, seed=1, stats=stats))
    ids = list(generate_tokens(loaded.model, tokenizer.encode("héllo"), 30, temperature=1.0, seed=1,
                               stop_ids=[tokenizer.eot_id]))
    # Broken byte sequences and raw control characters are dropped, never shown as U+FFFD.
    expected = clean(tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore"))
    assert "".join(deltas) == expected and "\ufffd" not in expected
    assert stats["tokens"] == len(ids) and stats["tokens_per_sec"] > 0

"""Distillation: the pure loss against hand-computed values, the teacher frozen, mismatches refused."""

import math

import pytest
import torch
import torch.nn.functional as F

from slm_core.config import ModelConfig, RunConfig, TokenizerConfig
from slm_core.errors import SLMError
from slm_core.models.model import Transformer
from slm_core.train.distill import DistillLoss, check_compatible, distillation_loss, load_teacher

V = 11


def tiny_config(family="llama", vocab=V, **kw):
    return ModelConfig(family=family, n_layer=1, n_head=2, d_model=16, context_length=16, vocab_size=vocab, **kw)


def random_batch(seed=0, B=2, T=5):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g)
    teacher = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    return student, teacher, labels


def test_kd_is_zero_when_teacher_equals_student():
    student, _, labels = random_batch()
    loss, ce, kd = distillation_loss(student, student.clone(), labels, alpha=0.5, temperature=2.0)
    assert abs(kd.item()) < 1e-6
    assert torch.allclose(loss, 0.5 * ce)


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_is_kd():
    student, teacher, labels = random_batch()
    labels[0, 1] = -100
    plain = F.cross_entropy(student.view(-1, V), labels.view(-1), ignore_index=-100)
    loss, ce, kd = distillation_loss(student, teacher, labels, alpha=0.0)
    assert torch.allclose(loss, plain, atol=1e-6) and torch.allclose(ce, plain, atol=1e-6)
    assert kd.item() > 0
    loss1, _, kd1 = distillation_loss(student, teacher, labels, alpha=1.0)
    assert torch.allclose(loss1, kd1) and torch.allclose(kd1, kd)
    loss_mix, _, _ = distillation_loss(student, teacher, labels, alpha=0.3)
    assert torch.allclose(loss_mix, 0.3 * kd + 0.7 * ce)


def test_temperature_scaling_matches_hand_computed_example():
    s, t = [1.0, 2.0, 3.0], [3.0, 2.0, 0.5]
    T = 2.0

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    p, q = softmax(t), softmax(s)
    expected_kd = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected_ce = -math.log(math.exp(s[1]) / sum(math.exp(v) for v in s))  # label 1, temperature 1
    loss, ce, kd = distillation_loss(torch.tensor([[s]]), torch.tensor([[t]]), torch.tensor([[1]]),
                                     alpha=0.25, temperature=T)
    assert kd.item() == pytest.approx(expected_kd, rel=1e-5)
    assert ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert loss.item() == pytest.approx(0.25 * expected_kd + 0.75 * expected_ce, rel=1e-5)


def test_ignored_positions_do_not_count():
    student, teacher, labels = random_batch()
    labels[:, :2] = -100
    loss, ce, kd = distillation_loss(student, teacher, labels)
    # Whatever the logits at ignored positions are, the loss is unchanged ...
    student2, teacher2 = student.clone(), teacher.clone()
    student2[:, :2] += 50 * torch.randn_like(student2[:, :2])
    teacher2[:, :2] -= 30
    loss2, _, _ = distillation_loss(student2, teacher2, labels)
    assert torch.allclose(loss, loss2)
    # ... and it is the token-level mean over the kept positions alone.
    kept, _, _ = distillation_loss(student[:, 2:], teacher[:, 2:], labels[:, 2:])
    assert torch.allclose(loss, kept, atol=1e-6)
    # A batch with nothing to learn from gives 0, not NaN.
    none, _, _ = distillation_loss(student, teacher, torch.full_like(labels, -100))
    assert none.item() == 0.0


def test_mismatched_vocab_shapes_are_refused():
    student, teacher, labels = random_batch()
    with pytest.raises(SLMError, match="vocabulary"):
        distillation_loss(student, torch.cat([teacher, teacher[..., :1]], -1), labels)


def test_gradient_flows_only_into_the_student():
    torch.manual_seed(0)
    student, teacher = Transformer(tiny_config()), Transformer(tiny_config())
    x = torch.randint(0, V, (2, 8))
    y = torch.randint(0, V, (2, 8))
    loss, extras = DistillLoss(teacher, alpha=0.7, temperature=2.0)(student, x, y)
    loss.backward()
    assert set(extras) == {"ce_loss", "kd_loss"} and all(isinstance(v, float) for v in extras.values())
    assert extras["kd_loss"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # Even if the caller hands in teacher logits that carry a graph, the loss never reaches back into it.
    t_logits = teacher(x)
    distillation_loss(student(x), t_logits, y)[0].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_student_moves_toward_the_teacher():
    torch.manual_seed(0)
    student, teacher = Transformer(tiny_config()), Transformer(tiny_config(init_std=0.3))
    teacher.requires_grad_(False).eval()
    loss_fn = DistillLoss(teacher, alpha=1.0, temperature=1.0)
    x = torch.randint(0, V, (4, 12))
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, extras = loss_fn(student, x, x)
        first = first if first is not None else extras["kd_loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert extras["kd_loss"] < 0.5 * first, (first, extras)


def test_a_training_context_longer_than_the_teacher_is_refused():
    teacher = Transformer(tiny_config())  # context 16
    student = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, context_length=32, vocab_size=V))
    x = torch.zeros(1, 17, dtype=torch.long)
    with pytest.raises(SLMError, match="model.context_length=16"):
        DistillLoss(teacher)(student, x, x)


# ---- teachers from disk ----------------------------------------------------------------------

def _hf_llama_folder(tmp_path, vocab=V):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "hf-teacher")
    return tmp_path / "hf-teacher", model


def test_hugging_face_folder_teacher_is_frozen_and_gives_its_logits(tmp_path):
    folder, reference = _hf_llama_folder(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer"):
        teacher, tokenizer = load_teacher(str(folder), "cpu")
        check_compatible(None, tokenizer, V, teacher.config.vocab_size)
    assert tokenizer is None  # the folder has no tokenizer.json
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.config.vocab_size == V and teacher.config.context_length == 32
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.allclose(teacher(x), reference(input_ids=x).logits, atol=1e-6)
    # The student distils from it through the ordinary loss.
    student = Transformer(tiny_config())
    loss, extras = DistillLoss(teacher)(student, x, x)
    assert math.isfinite(loss.item()) and extras["kd_loss"] > 0


def test_hugging_face_folder_with_a_padded_vocab_is_refused(tmp_path):
    folder, _ = _hf_llama_folder(tmp_path, vocab=16)
    teacher, _ = load_teacher(str(folder), "cpu")
    with pytest.warns(UserWarning), pytest.raises(SLMError, match="model.vocab_size=16"):
        check_compatible(None, None, V, teacher.config.vocab_size)


def _char_tokenizer(text):
    from slm_core.models.tokenizer import build_tokenizer

    return build_tokenizer(TokenizerConfig(kind="char"), texts=[text], progress=False)


def test_mismatched_tokenizer_is_refused_before_training():
    pytest.importorskip("slm_core.models.tokenizer")
    student_tok = _char_tokenizer("once upon a time there was a fox")
    teacher_tok = _char_tokenizer("completely different letters: XYZ 123!")
    with pytest.raises(SLMError, match="tokenizer.path"):
        check_compatible(student_tok, teacher_tok, student_tok.n_vocab, teacher_tok.n_vocab)
    same = _char_tokenizer("once upon a time there was a fox")
    check_compatible(student_tok, same, same.n_vocab, same.n_vocab)  # the same tokenizer passes
    with pytest.raises(SLMError, match=f"model.vocab_size={same.n_vocab + 5}"):
        check_compatible(student_tok, same, same.n_vocab, same.n_vocab + 5)


def test_studio_checkpoint_teacher_loads_with_its_tokenizer(tmp_path):
    pytest.importorskip("slm_core.models.tokenizer")
    from slm_core.run.checkpoint import save_checkpoint

    tokenizer = _char_tokenizer("the teacher's own alphabet")
    tokenizer.save(tmp_path / "tok")
    config = RunConfig(model=tiny_config(vocab=tokenizer.n_vocab))
    torch.manual_seed(0)
    model = Transformer(config.model).eval()
    ckpt = save_checkpoint(tmp_path / "checkpoints", "best", model, config, tmp_path / "tok", {"step": 1})
    teacher, teacher_tok = load_teacher(str(ckpt), "cpu")
    assert teacher_tok.fingerprint() == tokenizer.fingerprint()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randint(0, tokenizer.n_vocab, (1, 7))
    with torch.no_grad():
        assert torch.equal(teacher(x), model(x))


def test_a_teacher_exported_with_the_same_tokenizer_is_accepted(tmp_path):
    pytest.importorskip("slm_core.models.tokenizer")
    from slm_core.models.tokenizer import Tokenizer

    tokenizer = _char_tokenizer("shared alphabet for both models")
    folder, _ = _hf_llama_folder(tmp_path, vocab=tokenizer.n_vocab)
    tokenizer.save_hf(folder)  # the teacher folder now carries tokenizer.json
    teacher, teacher_tok = load_teacher(str(folder), "cpu")
    assert isinstance(teacher_tok, Tokenizer)
    check_compatible(tokenizer, teacher_tok, tokenizer.n_vocab, teacher.config.vocab_size)  # same ids: no error

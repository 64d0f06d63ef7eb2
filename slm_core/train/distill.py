"""Knowledge distillation: `DistillLoss` (the frozen teacher on the student's batch, soft-target KL mixed with
cross-entropy), and `check_compatible`, which refuses a teacher with another vocabulary."""

from __future__ import annotations

import types
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.models.model import merge_adapter
from slm_core.models.tokenizer import Tokenizer

IGNORE_INDEX = -100


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float = 0.5, temperature: float = 2.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinton-style distillation loss → (loss, ce_loss, kd_loss), each a 0-dim fp32 tensor.

    student_logits, teacher_logits: (B, T, V); labels: (B, T) with -100 at positions to ignore.
    kd   = T² · KL(softmax(teacher/T) ‖ softmax(student/T)), a token-level mean: the KL summed over
           the vocabulary at each position, averaged over the positions whose label is not -100.
    ce   = cross-entropy of the student (temperature 1) on the labels, averaged the same way.
    loss = alpha · kd + (1 − alpha) · ce.
    The T² factor keeps the KD gradient's size independent of the temperature. Gradients flow
    into the student only (the teacher logits are detached). Computed in fp32 for stability,
    whatever dtype autocast produced the logits in.
    """
    if student_logits.shape != teacher_logits.shape:
        raise SLMError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                       f"{tuple(teacher_logits.shape)} differ in shape: teacher and student need the same "
                       f"vocabulary size (see distill.check_compatible)")
    vocab = student_logits.size(-1)
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    mask = (labels != IGNORE_INDEX).float()  # (B, T)
    # Sum over positions / number of kept positions; clamp so an all-ignored batch gives 0, not NaN.
    n_kept = mask.sum().clamp(min=1.0)

    ce_sum = F.cross_entropy(student.reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                             reduction="sum")
    ce = ce_sum / n_kept

    log_p_student = F.log_softmax(student / temperature, dim=-1)  # (B, T, V)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = p · (log p − log q), summed over V per token.
    kl_per_token = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)  # (B, T)
    kd = (temperature ** 2) * (kl_per_token * mask).sum() / n_kept

    loss = alpha * kd + (1.0 - alpha) * ce
    return loss, ce, kd


class DistillLoss:
    """The training loop's loss for mode=distill: `loss_fn(student_model, x, y) -> (loss, extras)`.

    The loop calls it inside its autocast context, so the teacher runs under the same autocast
    as the student. The teacher sees the same batch x (B, T); its logits live only for this call.
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0):
        self.teacher = teacher
        self.alpha = alpha
        self.temperature = temperature
        self.teacher_context = teacher_context_length(teacher)

    def __call__(self, student_model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        if self.teacher_context is not None and x.size(1) > self.teacher_context:
            raise SLMError(f"the training context ({x.size(1)} tokens) is longer than the teacher's "
                           f"({self.teacher_context}); set model.context_length={self.teacher_context} or less")
        # Teacher first: its activations are freed before the student builds its autograd graph.
        with torch.no_grad():
            teacher_logits = self.teacher(x)  # (B, T, V)
        student_logits = student_model(x)  # (B, T, V)
        loss, ce, kd = distillation_loss(student_logits, teacher_logits, y, self.alpha, self.temperature)
        return loss, {"ce_loss": ce.item(), "kd_loss": kd.item()}


# ---- the teacher ---------------------------------------------------------------------------

class HFTeacher(nn.Module):
    """A Hugging Face causal LM seen as our models are: forward(input_ids (B, T)) -> logits (B, T, V).

    `config` carries only what the distillation code reads (vocab_size, context_length), taken
    from the model itself so a padded output layer is reported as it really is.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model
        hf_config = hf_model.config
        out = hf_model.get_output_embeddings()
        vocab = out.weight.shape[0] if out is not None else getattr(hf_config, "vocab_size", None)
        context = getattr(hf_config, "max_position_embeddings", None)
        self.config = types.SimpleNamespace(vocab_size=vocab, context_length=context,
                                            model_type=getattr(hf_config, "model_type", None))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=input_ids, use_cache=False).logits


def _is_hf_folder(source) -> bool:
    path = Path(str(source)).expanduser()
    ours = (path / "config.yaml").exists() or (path / "quantization.json").exists()  # load_model's kinds
    return path.is_dir() and (path / "config.json").exists() and not ours


def load_teacher(source, device="cpu", dtype: Optional[torch.dtype] = None, native: bool = False,
                 runs_dir: Optional[Path] = None):
    """A frozen teacher in eval mode → (teacher_module, teacher_tokenizer or None).

    source: a Studio run (name or folder) or checkpoint folder, loaded by checkpoint.load_model
    (a LoRA run is merged, since the teacher never trains); or a local Hugging Face causal-LM
    folder (config.json + weights), loaded with transformers' AutoModelForCausalLM so any
    architecture it knows can teach. native=True loads a Hugging Face folder (or Hub id) as our own
    Transformer instead, as "shrink this model" needs (its layers become the student's).
    dtype: None keeps fp32 weights; torch.bfloat16 halves the teacher's memory on a GPU.
    The tokenizer is the run's, or the folder's tokenizer.json if any. Run names are looked up in `runs_dir`.
    """
    if _is_hf_folder(source) and not native:
        teacher, tokenizer = _load_hf_teacher(Path(str(source)).expanduser(), dtype)
    else:
        loaded = load_model(source, tag="best", runs_dir=runs_dir)
        # A LoRA run loads as base + adapter: fold the adapter in once, since the teacher never trains.
        teacher, tokenizer = merge_adapter(loaded.model), loaded.tokenizer
        if dtype is not None:
            teacher.to(dtype=dtype)
    teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher, tokenizer


def _load_hf_teacher(folder: Path, dtype: Optional[torch.dtype]):
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        return _load_hf_teacher_native(folder, dtype)
    # transformers 4.56 renamed torch_dtype= to dtype= (the old name warns in 5.x).
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                        **{dtype_kwarg: dtype or torch.float32})
    except (OSError, ValueError, KeyError) as exc:
        raise SLMError(f"could not load the teacher from {folder} as a Hugging Face causal LM ({exc}); "
                       f"point distill.teacher at a folder holding config.json and the model weights, "
                       f"or at a Studio run") from exc
    tokenizer = None
    if (folder / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_hf(folder)
    return HFTeacher(hf_model), tokenizer


def _load_hf_teacher_native(folder: Path, dtype: Optional[torch.dtype]):
    """Without transformers: our own converter still reads GPT-2 and Llama-family folders."""
    try:
        loaded = load_model(folder, dtype=dtype)
    except Exception as exc:  # any failure here means: this architecture needs transformers
        raise SLMError(f"the teacher {folder} is a Hugging Face folder this install cannot read without "
                       f"transformers ({exc}); run `pip install transformers` or use a Studio run as teacher") from exc
    return loaded.model, loaded.tokenizer


def teacher_context_length(teacher: nn.Module) -> Optional[int]:
    """The longest sequence the teacher accepts, if it says (None: no known limit)."""
    return getattr(getattr(teacher, "config", None), "context_length", None)


# ---- compatibility -------------------------------------------------------------------------

def _describe(tokenizer) -> str:
    return f"{getattr(tokenizer, 'kind', '?')}, {getattr(tokenizer, 'n_vocab', '?')} tokens"


PROBE_TEXT = "Once upon a time, 42 foxes said: \"Héllo — naïve café!\"\n\tThe end. 日本語 🙂"


def same_token_ids(a, b) -> bool:
    """True when two tokenizers map text to the same ids and ids to the same bytes.

    Equal fingerprints settle it at once. Otherwise (e.g. a run's tokenizer and its Hugging Face
    export, which hash differently) compare every id's bytes and a probe text's encoding.
    """
    if a.fingerprint() == b.fingerprint():
        return True
    if a.n_vocab != b.n_vocab or a.encode(PROBE_TEXT) != b.encode(PROBE_TEXT):
        return False
    return all(a.decode_bytes([i]) == b.decode_bytes([i]) for i in range(a.n_vocab))


def check_compatible(student_tokenizer, teacher_tokenizer, student_vocab: Optional[int],
                     teacher_vocab: Optional[int]) -> None:
    """Refuse, before training, a teacher whose token ids do not line up with the student's.

    Raises SLMError naming the difference and the fix. With no teacher tokenizer (a Hugging Face
    folder without tokenizer.json) only the vocabulary sizes can be compared, and a warning says so.
    """
    hint = ("Train the student with the teacher's tokenizer: leave tokenizer.path unset (the teacher's "
            "tokenizer is then used) or set tokenizer.path to the teacher run's tokenizer folder "
            "(<runs>/<teacher>/tokenizer).")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if not same_token_ids(student_tokenizer, teacher_tokenizer):
            raise SLMError(f"the student's tokenizer ({_describe(student_tokenizer)}) is not the teacher's "
                           f"({_describe(teacher_tokenizer)}): distillation matches the two models' "
                           f"predictions token id by token id, so both must use one tokenizer. {hint}")
    elif teacher_tokenizer is None:
        warnings.warn("the teacher has no tokenizer file, so only the vocabulary sizes can be checked: make sure "
                      "the student uses the tokenizer the teacher was trained with", stacklevel=2)
    if student_vocab is not None and teacher_vocab is not None and student_vocab != teacher_vocab:
        raise SLMError(f"the student predicts over {student_vocab} tokens but the teacher over {teacher_vocab}: "
                       f"the logits must line up one to one. If both use the same tokenizer, set "
                       f"model.vocab_size={teacher_vocab} so the output layers match; otherwise: {hint}")

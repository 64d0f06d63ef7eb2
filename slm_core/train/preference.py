"""DPO and ORPO on the one training loop: the replies' log-probabilities, the frozen reference's (the base with
the LoRA adapter switched off, no second copy; for full training computed once per dataset and base and cached
beside the pair tokens), the losses as TRL computes them (tests/test_preference.py holds them to TRL's on the
same batch), and the held-out evaluation that picks the best checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import io
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from slm_core.config import PreferenceConfig
from slm_core.data.preference import PreferenceData
from slm_core.fsio import atomic_write_bytes
from slm_core.models.model import is_peft, unwrap

REFERENCE_BATCH = 16  # pairs per forward when precomputing the reference (no gradients: memory is the logits)


# ---- log-probabilities ---------------------------------------------------------------------------------

def reply_logps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p over each row's reply tokens (2B,), reply token count (2B,)). x (2B, T); y (2B, T+1) from
    PreferenceData (labels, -100 off the reply, then the pair index). Cross-entropy per token: the fused kernel
    never holds a (2B, T, V) log-softmax beside the logits."""
    labels = y[:, :-1]
    logits = model(x)
    per_token = -F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    per_token = per_token.view_as(labels)  # 0 where ignored
    return per_token.sum(-1), (labels != -100).sum(-1)


@contextlib.contextmanager
def adapter_off(model: torch.nn.Module):
    """The LoRA model as its frozen base (peft's disable_adapter): the DPO reference without a second copy."""
    peft_model = unwrap(model)
    with peft_model.disable_adapter():
        yield


# ---- losses (TRL's formulas: trl.DPOTrainer._compute_loss, trl.experimental.orpo odds_ratio_loss) -----

def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               beta: float, loss_type: str = "sigmoid", n_chosen: Optional[torch.Tensor] = None,
               n_rejected: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward), each (B,). Rewards are beta times the log-ratio to the
    reference; ipo compares per-token averages (n_chosen/n_rejected: reply token counts), as TRL does."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        delta = chosen_ratio / n_chosen.clamp(min=1) - rejected_ratio / n_rejected.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def orpo_odds_ratio(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta * log sigmoid(log odds ratio) per pair, the log odds ratio) from per-token average log-probs."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    return beta * F.logsigmoid(log_odds), log_odds


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (as TRL's log1mexp)."""
    return torch.where(x > -0.693147, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# ---- the loss the loop calls --------------------------------------------------------------------------

class PreferenceLoss:
    """loss_fn(model, x, y) -> (loss, metrics) for train.mode dpo | orpo; evaluate(...) scores held-out pairs.
    reference: per split, a (pairs, 2) tensor of the reference's [chosen, rejected] log-probs; None with LoRA
    (the reference is the same model with its adapter off) and for ORPO (which has none)."""

    def __init__(self, mode: str, settings: PreferenceConfig, reference: Optional[dict] = None):
        self.mode, self.settings, self.reference = mode, settings, reference

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, split: str = "train"):
        logps, counts = reply_logps(model, x, y)
        chosen, rejected = logps.chunk(2)
        n_chosen, n_rejected = counts.chunk(2)
        if self.mode == "orpo":
            return self._orpo(chosen, rejected, n_chosen, n_rejected)
        ref_chosen, ref_rejected = self._reference(model, x, y, split)
        losses, chosen_rewards, rejected_rewards = dpo_losses(chosen, rejected, ref_chosen, ref_rejected,
                                                              self.settings.beta, self.settings.loss, n_chosen, n_rejected)
        return losses.mean(), _metrics(chosen_rewards, rejected_rewards, chosen, rejected)

    def _orpo(self, chosen, rejected, n_chosen, n_rejected):
        # NLL of the chosen replies (mean over their tokens) minus the odds-ratio term, as TRL's ORPOTrainer
        nll = -chosen.sum() / n_chosen.sum().clamp(min=1)
        chosen_avg, rejected_avg = chosen / n_chosen.clamp(min=1), rejected / n_rejected.clamp(min=1)
        ratio, log_odds = orpo_odds_ratio(chosen_avg, rejected_avg, self.settings.beta)
        beta = self.settings.beta
        metrics = _metrics(beta * chosen_avg.detach(), beta * rejected_avg.detach(), chosen, rejected)
        return nll - ratio.mean(), {**metrics, "nll_loss": nll.detach(), "log_odds_ratio": log_odds.detach().mean()}

    def _reference(self, model, x, y, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is None:  # LoRA: the base is the model with its adapter off (outside DDP: no gradients)
            with torch.no_grad(), adapter_off(model):
                return reply_logps(unwrap(model), x, y)[0].chunk(2)
        n = x.size(0) // 2
        table = self.reference[split].to(x.device)
        picked = table[y[:n, -1]]  # (B, 2): this batch's pairs
        return picked[:, 0], picked[:, 1]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data: PreferenceData, batch_size: int, context_length: int,
                 limit: int, autocast: Callable = contextlib.nullcontext) -> dict:
        """The loss and reward figures on held-out pairs (the first `limit`), and choice_accuracy: how often the
        model itself gives the chosen reply the higher log-probability (measurable before any training)."""
        sums: dict = {}
        n_pairs = 0
        for _, x, y in data.iter_batches("val", batch_size, context_length, limit):
            x, y = x.to(_device(model)), y.to(_device(model))
            with autocast():
                loss, metrics = self(model, x, y, split="val")
            b = x.size(0) // 2
            for key, value in {"loss": loss, **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * b
            n_pairs += b
        return {f"val_{key}": value / n_pairs for key, value in sums.items()}


def _metrics(chosen_rewards, rejected_rewards, chosen, rejected) -> dict:
    """What each step logs (flat names the Studio plots): rewards, their margin and accuracy, reply log-probs."""
    return {"rewards_chosen": chosen_rewards.mean(), "rewards_rejected": rejected_rewards.mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "logps_chosen": chosen.detach().mean(), "logps_rejected": rejected.detach().mean(),
            "choice_accuracy": (chosen.detach() > rejected.detach()).float().mean()}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- building it --------------------------------------------------------------------------------------

def build_loss(mode: str, settings: PreferenceConfig, model: torch.nn.Module, data: PreferenceData,
               context_length: int) -> PreferenceLoss:
    """The loss for a run: DPO without LoRA first computes (or finds cached) the reference log-probs of every
    pair, from `model` as it is now, the base before any step."""
    if mode == "orpo" or is_peft(unwrap(model)):
        return PreferenceLoss(mode, settings)
    return PreferenceLoss(mode, settings, reference_table(model, data, context_length))


def reference_table(model: torch.nn.Module, data: PreferenceData, context_length: int) -> dict:
    """{split: (pairs, 2) float32 tensor} of the model's [chosen, rejected] reply log-probs, cached in the pair
    cache folder under a digest of the weights, so a resumed run (or another run on the same base) reads them."""
    path = data.cache_dir / f"reference-{weights_digest(model)}-{context_length}.npz"
    if path.exists():
        with np.load(path) as saved:
            if all(saved[split].shape == (data.pairs(split), 2) for split in ("train", "val")):
                return {split: torch.from_numpy(saved[split]) for split in ("train", "val")}
    was_training = model.training
    model.eval()  # no dropout: the reference is the deterministic base
    tables = {}
    with torch.no_grad():
        for split in ("train", "val"):
            table = np.zeros((data.pairs(split), 2), np.float32)
            for indices, x, y in data.iter_batches(split, REFERENCE_BATCH, context_length):
                logps = reply_logps(model, x.to(_device(model)), y.to(_device(model)))[0].float().cpu()
                table[indices] = logps.view(2, -1).T.numpy()
            tables[split] = table
    model.train(was_training)
    buffer = io.BytesIO()
    np.savez(buffer, **tables)
    atomic_write_bytes(path, buffer.getvalue())
    return {split: torch.from_numpy(table) for split, table in tables.items()}


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of the weights (each tensor's name, shape, sum and first values): which base a cached
    reference belongs to, without hashing gigabytes."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        flat = tensor.detach().flatten()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{float(flat.double().sum()):.10e}".encode())
        digest.update(flat[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]

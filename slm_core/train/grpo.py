"""train.mode=grpo: Group Relative Policy Optimization with rewards a program computes.

Each step takes `train.batch_size` prompts, samples `grpo.group_size` completions of each on the project's
batched decoder (slm_core.infer.decoder: every completion of the step is one slot of one static KV cache, a
prompt prefilled once and its cache rows copied to its group), scores them (slm_core.train.rewards),
normalises the rewards within each group into advantages, and descends on
    -A * ratio + beta * KL(policy || reference)      per completion token (ratio = 1, one update per sample)
with the k3 estimator of the KL (exp(r - p) - (r - p) - 1, r and p the reference's and the policy's log-probs).
With LoRA (the default) the reference is the start model itself with the adapter disabled; a full fine-tune
keeps a frozen copy. Completions are sampled from the trainer's sampler generator, which checkpoints hold, so a
resumed run draws the same prompts and completions it would have drawn."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.config import RunConfig
from slm_core.data.arithmetic import CORPUS_SEED, QUESTION_FORMAT, arithmetic_items
from slm_core.data.sources import HUB_NAME, hub_offline_reason, load_tabular
from slm_core.errors import SLMError
from slm_core.infer.decoder import Decoder
from slm_core.models.model import base_transformer, is_peft, unwrap
from slm_core.models.templates import format_prompt
from slm_core.run import runs
from slm_core.train.rewards import Batch, build_rewards, score_all

BUILTIN_PROMPTS = 512  # problems drawn from the arithmetic space (49 distinct sums): plenty for a short run
PROMPT_COLUMNS = ("prompt", "question", "problem", "instruction")
REFERENCE_COLUMNS = ("reference", "answer", "solution", "output")
OFFLINE_ALTERNATIVE = ("use grpo.prompts=builtin:arithmetic (shipped, offline) or a local JSONL/CSV/Parquet file "
                       "with prompt and reference columns")


# ---- the prompt set ----------------------------------------------------------------------------------

@dataclass
class Problem:
    question: str  # as the evaluation task asks it ("Question: ...\nAnswer:")
    reference: Optional[str]
    ids: list[int] = field(default_factory=list)  # rendered through the run's template and tokenized


def load_problems(source: str, hub_split: str = "train") -> list[tuple[str, Optional[str]]]:
    """(question, reference) pairs from 'builtin:arithmetic', a local table file, or a Hub dataset by name."""
    source = str(source).strip()
    if source == "builtin:arithmetic":
        return [(QUESTION_FORMAT.format(prompt=i["prompt"]), i["reference"])
                for i in arithmetic_items(BUILTIN_PROMPTS, CORPUS_SEED)]
    path = Path(source).expanduser()
    if path.is_file():
        return _from_rows(load_tabular(path), str(path))
    if HUB_NAME.match(source):
        return _from_rows(_hub_rows(source, hub_split), source)
    raise SLMError(f"grpo.prompts={source!r} is no file here and no Hub dataset name: {OFFLINE_ALTERNATIVE}")


def _hub_rows(name: str, split: str):
    reason = hub_offline_reason()
    if reason:  # fail in seconds, naming what works offline
        raise SLMError(f"grpo.prompts={name!r} is a Hub dataset and cannot be downloaded ({reason}); "
                       f"{OFFLINE_ALTERNATIVE}")
    import datasets

    repo, _, subset = name.partition(":")
    try:
        return datasets.load_dataset(repo, subset or None, split=split)
    except Exception as error:  # noqa: BLE001 - any loading failure is the user's to fix: one line
        raise SLMError(f"could not load grpo.prompts={name!r} split {split!r} ({type(error).__name__}: {error}); "
                       f"check the name, or {OFFLINE_ALTERNATIVE}") from None


def _from_rows(rows, where: str) -> list[tuple[str, Optional[str]]]:
    columns = list(rows.column_names)
    prompt = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if prompt is None:
        raise SLMError(f"{where} has no prompt column (looked for {', '.join(PROMPT_COLUMNS)}; it has "
                       f"{', '.join(columns)}): name the question column 'prompt'")
    reference = next((c for c in REFERENCE_COLUMNS if c in columns), None)
    problems = []
    for number, row in enumerate(rows, start=1):
        text = row[prompt]
        if not isinstance(text, str) or not text.strip():
            raise SLMError(f"{where} row {number}: the {prompt!r} field is empty; give every row a question")
        answer = None if reference is None or row[reference] is None else _final_answer(str(row[reference]))
        problems.append((QUESTION_FORMAT.format(prompt=text.strip()), answer))
    if not problems:
        raise SLMError(f"{where} holds no rows: add one prompt per row")
    return problems


def _final_answer(text: str) -> str:
    """GSM8K writes its worked solution, then '#### 72': the answer is what follows the marks."""
    return text.rsplit("####", 1)[-1].strip() if "####" in text else text.strip()


def render(question: str, tokenizer, template: Optional[str]) -> list[int]:
    """The question as the run's model is asked it: through its template, as the evaluation harness does."""
    if template == "model":
        return list(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                  add_generation_prompt=True, tokenize=True))
    text = question if template is None else format_prompt([{"role": "user", "content": question}], template)
    return tokenizer.encode(text)


# ---- sampling groups on the batched decoder ------------------------------------------------------------

@torch.no_grad()
def sample_groups(decoder: Decoder, prompts: list[list[int]], group: int, max_new_tokens: int, temperature: float,
                  top_k: int, stop_ids, generator: torch.Generator) -> list[list[int]]:
    """`group` completions of each prompt (prompt-major: completion i belongs to prompt i // group), each ending
    with its stop token when it stopped. One prefill per prompt; every decode step is one batched step."""
    n = len(prompts) * group
    if n > decoder.slots:
        raise SLMError(f"{n} completions need {n} decoder slots; the decoder has {decoder.slots}")
    first = []
    for p, ids in enumerate(prompts):
        logits = decoder.prefill(p * group, ids)
        for k_cache, v_cache in decoder.cache:  # the group shares its prompt's cache rows
            k_cache[p * group + 1:(p + 1) * group, :, :len(ids)] = k_cache[p * group, :, :len(ids)]
            v_cache[p * group + 1:(p + 1) * group, :, :len(ids)] = v_cache[p * group, :, :len(ids)]
        first.append(logits.expand(group, -1))
    logits = torch.cat(first)  # (n, V)
    stops = set(stop_ids)
    out: list[list[int]] = [[] for _ in range(n)]
    live = list(range(n))
    for _ in range(max_new_tokens):
        tokens = _pick(logits, temperature, top_k, generator)
        still = []
        for row, token in zip(live, tokens):
            out[row].append(token)
            if token not in stops:
                still.append((row, token))
        if not still or len(out[still[0][0]]) >= max_new_tokens:
            break
        live = [row for row, _ in still]
        positions = [len(prompts[row // group]) + len(out[row]) - 1 for row in live]
        logits = decoder.step(live, [token for _, token in still], positions)
    return out


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> list[int]:
    """logits (n, V) → one sampled token per row, drawn from `generator` (a CPU generator: the checkpointed one)."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()


# ---- one step's batch and its loss ---------------------------------------------------------------------

@dataclass
class Rollout:
    tokens: torch.Tensor  # (N, T) prompt + completion, right-padded
    mask: torch.Tensor  # (N, T-1) 1 where position t predicts a completion token
    advantages: torch.Tensor  # (N,)
    stats: dict  # floats logged with the step


def group_advantages(rewards: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (N,) prompt-major → (advantages (N,), each group's standard deviation (N/group,)). A group whose
    completions all scored the same teaches nothing: its advantages are 0."""
    grouped = rewards.view(-1, group)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True, unbiased=False)
    return ((grouped - mean) / (std + 1e-4)).view(-1), std.view(-1)


def token_logprobs(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) → (N, T-1) fp32."""
    logits = model(tokens[:, :-1]).float()
    return torch.gather(F.log_softmax(logits, dim=-1), -1, tokens[:, 1:, None])[..., 0]


def grpo_loss(logp: torch.Tensor, ref_logp: Optional[torch.Tensor], advantages: torch.Tensor, mask: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss averaged over completion tokens, the mean per-token KL to the reference)."""
    ratio = torch.exp(logp - logp.detach())  # 1, but carries the policy gradient
    per_token = -ratio * advantages[:, None]
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    tokens = mask.sum().clamp(min=1)
    return (per_token * mask).sum() / tokens, (kl.detach() * mask).sum() / tokens


class GRPO:
    """The mode's two hooks into the training loop: `batch` (sample, score, advantages) and `loss`."""

    def __init__(self, config: RunConfig, model: torch.nn.Module, tokenizer, run_dir: Path, is_main: bool = True):
        if config.train.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SLMError("train.mode=grpo samples from whole weights on each process: use train.strategy=ddp")
        self.cfg, self.tokenizer, self.run_dir, self.is_main = config.grpo, tokenizer, Path(run_dir), is_main
        self.group = config.grpo.group_size
        self.prompts_per_step = config.train.batch_size
        self.rewards = build_rewards(config.grpo)
        self.lora = is_peft(unwrap(model))
        # Full fine-tuning: the start model, frozen, is the reference. LoRA: the adapter disabled is (no copy).
        self.reference = None if self.lora or self.cfg.kl_beta == 0 else _frozen_copy(model)
        context = config.model.context_length
        self.problems = []
        for question, reference in load_problems(self.cfg.prompts, config.data.hub_split):
            ids = render(question, tokenizer, config.data.template)
            self.problems.append(Problem(question, reference, ids[-(context - self.cfg.max_new_tokens):]))
        if context <= self.cfg.max_new_tokens:
            raise SLMError(f"grpo.max_new_tokens={self.cfg.max_new_tokens} leaves no room for the prompt in the "
                           f"model's context of {context}: lower it")
        self.stop_ids = tuple(getattr(tokenizer, "stop_ids", None) or (tokenizer.eot_id,))
        self._decoder: Optional[Decoder] = None

    def _decoder_for(self, model: torch.nn.Module) -> Decoder:
        """One decoder for the run under LoRA (frozen weights are copied once; the adapters are called live);
        a full fine-tune changes every weight, so its decoder is prepared again each step."""
        if self._decoder is None or not self.lora:
            slots = self.prompts_per_step * self.group
            longest = max(len(p.ids) for p in self.problems) + self.cfg.max_new_tokens
            self._decoder = Decoder(model, slots=slots, max_len=longest, one_row_half=False)
        return self._decoder

    def batch(self, model: torch.nn.Module, generator: torch.Generator, step: int):
        """Sample this step's prompts and completions, score them → (Rollout, None) for `loss`."""
        picks = torch.randint(len(self.problems), (self.prompts_per_step,), generator=generator).tolist()
        problems = [self.problems[i] for i in picks]
        was_training = model.training
        model.eval()  # no dropout while sampling
        started = time.perf_counter()
        completions = sample_groups(self._decoder_for(model), [p.ids for p in problems], self.group,
                                    self.cfg.max_new_tokens, self.cfg.temperature, self.cfg.top_k, self.stop_ids,
                                    generator)
        sample_s = time.perf_counter() - started
        model.train(was_training)
        owners = [problems[i // self.group] for i in range(len(completions))]
        texts = [self.tokenizer.decode([t for t in c if t not in self.stop_ids]) for c in completions]
        scored = Batch([p.question for p in owners], texts, [p.reference for p in owners], [len(c) for c in completions])
        totals, each = score_all(self.rewards, scored)
        rewards = torch.tensor(totals)
        advantages, spread = group_advantages(rewards, self.group)
        stats = {"reward": rewards.mean().item(), "reward_std": spread.mean().item(),
                 "completion_len": sum(scored.lengths) / len(completions),
                 "completions_per_sec": len(completions) / sample_s if sample_s > 0 else 0.0,
                 **{f"reward/{name}": sum(values) / len(values) for name, values in each.items()}}
        if self.is_main and self.cfg.sample_rows:
            self._write_samples(step, scored, totals, each)
        device = next(model.parameters()).device
        tokens, mask = _pack([p.ids for p in owners], completions, device)
        return Rollout(tokens, mask, advantages.to(device), stats), None

    def loss(self, model: torch.nn.Module, rollout: Rollout, _unused=None):
        logp = token_logprobs(model, rollout.tokens)
        ref_logp = None
        if self.cfg.kl_beta > 0:
            with torch.no_grad():
                if self.lora:
                    with unwrap(model).disable_adapter():
                        ref_logp = token_logprobs(model, rollout.tokens)
                else:
                    ref_logp = token_logprobs(self.reference, rollout.tokens)
        loss, kl = grpo_loss(logp, ref_logp, rollout.advantages, rollout.mask, self.cfg.kl_beta)
        return loss, {"kl": kl, **rollout.stats}

    def _write_samples(self, step: int, batch: Batch, totals: list[float], each: dict) -> None:
        """The step's first completions with their rewards, in the run's sample table (samples.jsonl)."""
        for i in range(min(self.cfg.sample_rows, len(batch.completions))):
            runs.append_jsonl(self.run_dir / "samples.jsonl", {
                "step": step, "prompt": batch.prompts[i], "text": batch.completions[i], "reward": totals[i],
                "rewards": {name: values[i] for name, values in each.items()}, "reference": batch.references[i]})


def _pack(prompts: list[list[int]], completions: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion rows (N, T) and the mask (N, T-1) of positions predicting a completion token."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) - 1:len(p) - 1 + len(c)] = 1.0
    return tokens.to(device), mask.to(device)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(base_transformer(model)).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference

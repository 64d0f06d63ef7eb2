"""GRPO: the grpo-arithmetic-cpu recipe as a user runs it (wall time, the arithmetic task's score before and
after), and completions sampled per second by our batched decoder against TRL's GRPOTrainer generating with
transformers on the Hugging Face export of the same start model, side by side.

    python benchmarks/bench_grpo.py [--skip-recipe] [--start RUN] [--steps 4]

Both samplers draw the same shape of batch as the recipe: 16 prompts x 8 completions, at most 20 new tokens,
temperature 0.7, LoRA r=8 on every linear (the adapter is part of the sampled model). TRL's figure times its
generation call (`_generate_single_turn`) inside real GRPOTrainer steps; its whole step time is printed too.
Note the machine's load (printed): under load every time grows.

Figures (2026-12-05, 2 CPU cores shared with other jobs at load average 8-20, one thread, all on CPU; re-measure
on a quiet machine):
  grpo-arithmetic-cpu via `slm train`: 16.1 min wall, 5.1 CPU-minutes (start 5.8 min + GRPO 9.8 min of session time);
    arithmetic task 0.280 (start) -> 0.345 (after 40 steps)
  completions/s, slm vs TRL 1.16 GRPOTrainer + transformers 5.25 (two runs): 157.8 vs 92.0 (1.72x), 137.3 vs 111.1
    (1.24x); per CPU second 1303.6 vs 764.5 (1.71x), 1021.9 vs 736.9 (1.39x)
  whole step, same batch (128 completions): slm 4.16 s, TRL 5.93 s (1.43x)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_time_to_quality import load_average  # noqa: E402  (a sibling script)

PROMPTS, GROUP, MAX_NEW, TEMPERATURE = 16, 8, 20, 0.7


def run_recipe(runs_dir: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", "grpo-arithmetic-cpu", "--name", "grpo",
           "--quiet", "--runs-dir", str(runs_dir)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the recipe failed: {proc.stderr.strip().splitlines()[-1:]}")
    status = lambda name: json.loads((runs_dir / name / "status.json").read_text())  # noqa: E731
    steps = [r["step_ms"] for r in map(json.loads, (runs_dir / "grpo" / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "train"]
    return {"wall_s": round(wall, 1), "start_session_s": round(status("grpo-start")["overhead"]["wall_s"], 1),
            "grpo_session_s": round(status("grpo")["overhead"]["wall_s"], 1),
            "grpo_step_s": round(sum(steps) / len(steps) / 1000, 2)}


def task_score(folder: Path) -> float:
    import torch

    from slm_core.models.load import load_model
    from slm_core.post.harness import run_tasks

    torch.manual_seed(0)
    loaded = load_model(folder, tag="latest")
    return run_tasks(loaded, ["arithmetic"])["tasks"]["slm_arithmetic"]["exact_match"]


def ours_completions_per_s(start: Path, steps: int) -> tuple[float, float]:
    """sample_groups on the LoRA-wrapped start, as slm_core.train.grpo samples during training."""
    import torch

    from slm_core.config import LoRAConfig
    from slm_core.infer.decoder import Decoder
    from slm_core.models.load import load_model
    from slm_core.models.lora import apply_lora
    from slm_core.train.grpo import load_problems, render, sample_groups

    loaded = load_model(start, tag="latest")
    model = apply_lora(loaded.model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets="all")).eval()
    problems = load_problems("builtin:arithmetic")
    generator = torch.Generator().manual_seed(0)
    stop = (loaded.tokenizer.eot_id,)
    total, seconds, cpu = 0, 0.0, 0.0
    longest = max(len(render(q, loaded.tokenizer, loaded.template)) for q, _ in problems)
    # Built once, as a LoRA run builds it: the frozen weights are prepared once, the adapters are called live
    decoder = Decoder(model, slots=PROMPTS * GROUP, max_len=longest + MAX_NEW, one_row_half=False)
    for step in range(steps + 1):  # the first round warms up
        picks = [problems[(step * PROMPTS + i) % len(problems)][0] for i in range(PROMPTS)]
        prompts = [render(q, loaded.tokenizer, loaded.template) for q in picks]
        started, cpu_started = time.perf_counter(), time.process_time()
        out = sample_groups(decoder, prompts, GROUP, MAX_NEW, TEMPERATURE, 0, stop, generator)
        if step:
            seconds += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            total += len(out)
    return total / seconds, total / cpu


def ours_step_s(start: Path, steps: int, scratch: Path) -> float:
    """Seconds per whole GRPO step (sample, score, policy and reference forwards, backward, AdamW) on the LoRA-wrapped
    start, the recipe's settings, through slm_core.train.grpo's own hooks."""
    import dataclasses

    import torch

    from slm_core.config import load_recipe
    from slm_core.models.load import load_model
    from slm_core.models.lora import apply_lora
    from slm_core.train.grpo import GRPO

    loaded = load_model(start, tag="latest")
    config = load_recipe("grpo-arithmetic-cpu")
    config = dataclasses.replace(config, model=loaded.config.model)
    model = apply_lora(loaded.model, config.lora)
    grpo = GRPO(config, model, loaded.tokenizer, scratch, is_main=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    generator = torch.Generator().manual_seed(0)
    seconds = 0.0
    for step in range(steps + 1):  # the first round warms up
        started = time.perf_counter()
        model.train()
        rollout, _ = grpo.batch(model, generator, step + 1)
        loss, _ = grpo.loss(model, rollout)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds += time.perf_counter() - started
    return seconds / steps


def trl_completions_per_s(start: Path, steps: int, scratch: Path) -> tuple[float, float, float]:
    """(completions per second and per CPU second in TRL's generation call, seconds per whole GRPOTrainer step)
    on the HF export of `start`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from slm_core.data.arithmetic import last_number_equals
    from slm_core.models.load import load_model
    from slm_core.post.export import export_model
    from slm_core.train.grpo import load_problems

    loaded = load_model(start, tag="latest")
    folder = scratch / "hf"
    export_model(loaded.model, loaded.tokenizer, loaded.config, folder, fmt="hf")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [{"prompt": q, "reference": r} for q, r in load_problems("builtin:arithmetic")]

    def last_number(prompts, completions, reference, **_):
        return [float(last_number_equals(c, r)) for c, r in zip(completions, reference)]

    args = GRPOConfig(output_dir=str(scratch / "trl"), use_cpu=True, report_to=[], save_strategy="no",
                      per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                      max_completion_length=MAX_NEW, temperature=TEMPERATURE, top_k=0, learning_rate=2e-3,
                      beta=0.04, max_steps=steps + 1, logging_steps=1, seed=0, disable_tqdm=True)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=last_number, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=lora)
    timings: list[tuple[int, float, float]] = []
    generate = trainer._generate_single_turn

    def timed(*a, **k):
        started, cpu_started = time.perf_counter(), time.process_time()
        completion_ids, logprobs = generate(*a, **k)
        timings.append((len(completion_ids), time.perf_counter() - started, time.process_time() - cpu_started))
        return completion_ids, logprobs

    trainer._generate_single_turn = timed
    started = time.perf_counter()
    trainer.train()
    per_step = (time.perf_counter() - started) / (steps + 1)
    measured = timings[1:]  # the first round warms up
    total = sum(n for n, _, _ in measured)
    return total / sum(s for _, s, _ in measured), total / sum(c for _, _, c in measured), per_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-recipe", action="store_true", help="only the sampling comparison (needs --start)")
    parser.add_argument("--start", type=Path, help="a start run to sample from (default: the recipe's own)")
    parser.add_argument("--steps", type=int, default=4, help="sampling rounds measured per side")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    print(f"load average before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        tmp = Path(tmp)
        env["SLM_CACHE_DIR"] = os.environ["SLM_CACHE_DIR"] = str(tmp / "cache")
        start = args.start
        if not args.skip_recipe:
            row = run_recipe(tmp / "runs", env)
            start = tmp / "runs" / "grpo-start"
            row.update(score_start=task_score(start), score_after=task_score(tmp / "runs" / "grpo"))
            print(f"grpo-arithmetic-cpu: {json.dumps(row)}  (load after: {load_average()})", flush=True)
        if start is None:
            parser.error("--skip-recipe needs --start RUN")
        ours, ours_cpu = ours_completions_per_s(start, args.steps)
        our_step = ours_step_s(start, args.steps, tmp)
        theirs, theirs_cpu, trl_step = trl_completions_per_s(start, args.steps, tmp)
        # per CPU second too: on a shared machine the wall-clock figure follows the others' load
        print(f"\ncompletions sampled ({PROMPTS} prompts x {GROUP}, <= {MAX_NEW} new tokens, temperature "
              f"{TEMPERATURE}, LoRA r=8 all linears, {torch.get_num_threads()} thread(s))")
        print(f"{'':<34}{'per s':>10}{'per CPU s':>12}")
        print(f"{'slm (batched decoder)':<34}{ours:>10.1f}{ours_cpu:>12.1f}")
        print(f"{'TRL GRPOTrainer (transformers)':<34}{theirs:>10.1f}{theirs_cpu:>12.1f}   whole step {trl_step:.2f} s")
        print(f"{'ratio slm / TRL':<34}{ours / theirs:>9.2f}x{ours_cpu / theirs_cpu:>11.2f}x   "
              f"(load after: {load_average()})")
        print(f"whole GRPO step, same batch shape: slm {our_step:.2f} s, TRL {trl_step:.2f} s "
              f"({trl_step / our_step:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

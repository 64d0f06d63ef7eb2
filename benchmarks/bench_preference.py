"""DPO here against TRL's DPOTrainer, on the same Hugging Face folder and the same pairs, side by side.

The model is one HF folder (save_hf_folder): a random-weight Llama-shaped preset (--preset, default tiny-llama)
with a BPE vocabulary trained on the pairs, or --base (a run or HF folder). The pairs are the shipped
builtin:preferences set written as JSONL. Each side runs in its own process (fp32, --threads threads) for
--steps optimizer steps of --batch pairs:

  ours   `slm train --set train.mode=dpo` on the HF folder (LoRA: the base with the adapter off is the reference;
         full: the reference log-probs precomputed once and cached beside the pair tokens)
  trl    DPOTrainer on AutoModelForCausalLM of the same folder (LoRA: peft_config, the adapter disabled for the
         reference; full: precompute_ref_log_probs=True), gradient checkpointing off as ours

Reported per side and mode: steps/s (median step time after the first two steps; data preparation, the
reference precompute and evaluation excluded on both sides), peak RSS (VmHWM of the process) and peak RSS
above the process's own baseline after its imports. And our LoRA-DPO peak against our full DPO.

    python benchmarks/bench_preference.py [--preset tiny-llama] [--steps 30] [--batch 8] [--modes lora,full]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA = dict(r=8, alpha=16.0, dropout=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"])


def _hwm_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def _rss_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


# ---- the shared inputs ----------------------------------------------------------------------------

def write_inputs(folder: Path, preset: str, base: str | None, pairs: int, context: int) -> tuple[Path, Path]:
    import torch

    from slm_core.config import TokenizerConfig, load_model_preset
    from slm_core.data.preference import builtin_pairs
    from slm_core.models.hf import save_hf_folder
    from slm_core.models.load import load_model
    from slm_core.models.model import Transformer, merge_adapter
    from slm_core.models.tokenizer import build_tokenizer

    rows = builtin_pairs(pairs)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hf = folder / "hf"
    if base:
        loaded = load_model(base)
        model, tokenizer = merge_adapter(loaded.model), loaded.tokenizer
    else:
        texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")]
        tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=2048, train_chars=10_000), texts,
                                    progress=False)
        cfg = load_model_preset(preset)
        cfg.vocab_size, cfg.context_length = tokenizer.n_vocab, context
        torch.manual_seed(0)
        model = Transformer(cfg)
    save_hf_folder(model.float(), tokenizer, hf)
    return hf, data


# ---- the workers (one process each) ----------------------------------------------------------------

def worker_ours(hf: str, data: str, mode: str, steps: int, batch: int, context: int, out: str) -> dict:
    import torch

    from slm_core.config import load_recipe
    from slm_core.run import runs
    from slm_core.train.loop import train

    baseline = _rss_mb()
    lora = mode == "lora"
    config = load_recipe("quickstart-cpu", [
        "train.mode=dpo", f"train.init_from={hf}", f"data.source={data}", "data.val_fraction=0.05",
        f"model.context_length={context}", f"train.batch_size={batch}", "train.precision=fp32",
        f"train.max_steps={steps}", f"train.eval_interval={steps * 10}", f"train.ckpt_interval={steps * 10}",
        "train.eval_batches=1", "train.sample_prompts=[]", "train.lr=5e-5", "train.warmup_steps=0",
        "train.weight_decay=0.0", f"preference.lora={str(lora).lower()}", f"lora.r={LORA['r']}",
        f"lora.alpha={LORA['alpha']}", f"lora.dropout={LORA['dropout']}", f"lora.targets={','.join(LORA['targets'])}",
        "preference.beta=0.1"])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    train(config, Path(out) / f"ours-{mode}", progress=False)
    times = [r["step_ms"] / 1000 for r in runs.read_metrics(Path(out) / f"ours-{mode}") if r["kind"] == "train"]
    return {"step_s": statistics.median(times[2:]), "peak_mb": _hwm_mb(), "baseline_mb": baseline}


def worker_trl(hf: str, data: str, mode: str, steps: int, batch: int, context: int, out: str) -> dict:
    import time

    import torch
    import transformers
    import trl
    from datasets import load_dataset
    from peft import LoraConfig

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    baseline = _rss_mb()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    pairs = load_dataset("json", data_files=data, split="train")
    lora = mode == "lora"
    args = trl.DPOConfig(output_dir=str(Path(out) / f"trl-{mode}"), use_cpu=True, report_to=[], save_strategy="no",
                         per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5, beta=0.1,
                         max_length=context + 1, gradient_checkpointing=False, logging_steps=10 * steps,
                         lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, disable_tqdm=True,
                         precompute_ref_log_probs=not lora, dataloader_num_workers=0, seed=0)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["targets"], task_type="CAUSAL_LM") if lora else None
    times: list = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.started)

    trainer = trl.DPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=pairs,
                             peft_config=peft_config, callbacks=[StepTimer()])
    trainer.train()
    return {"step_s": statistics.median(times[2:]), "peak_mb": _hwm_mb(), "baseline_mb": baseline}


# ---- driver --------------------------------------------------------------------------------------

def run_side(side: str, hf: Path, data: Path, mode: str, args, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads),
           "BENCH_THREADS": str(args.threads), "SLM_CACHE_DIR": str(out / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, __file__, "--worker", side, str(hf), str(data), mode, str(args.steps), str(args.batch),
           str(args.context), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{side} {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        side, hf, data, mode, steps, batch, context, out = sys.argv[2:10]
        fn = worker_ours if side == "ours" else worker_trl
        print(json.dumps(fn(hf, data, mode, int(steps), int(batch), int(context), out)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-llama")
    parser.add_argument("--base", help="a run or HF folder instead of a random-weight preset")
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="lora,full")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-pref-"))
    sys.path.insert(0, str(ROOT))
    hf, data = write_inputs(out, args.preset, args.base, args.pairs, args.context)
    print(f"model {args.base or args.preset} (HF folder {hf}), {args.pairs} pairs, batch {args.batch} pairs, "
          f"{args.steps} steps, {args.threads} threads, fp32")
    print(f"{'mode':<6}{'side':<6}{'steps/s':>9}{'peak MB':>9}{'above base MB':>15}")
    figures: dict = {}
    for mode in args.modes.split(","):
        for side in ("ours", "trl"):
            r = figures[(side, mode)] = run_side(side, hf, data, mode, args, out)
            print(f"{mode:<6}{side:<6}{1 / r['step_s']:>9.2f}{r['peak_mb']:>9.0f}{r['peak_mb'] - r['baseline_mb']:>15.0f}",
                  flush=True)
        ours, trl = figures[("ours", mode)], figures[("trl", mode)]
        print(f"{mode}: ours/TRL steps/s {trl['step_s'] / ours['step_s']:.2f}x, peak {ours['peak_mb'] / trl['peak_mb']:.2f}x, "
              f"above baseline {(ours['peak_mb'] - ours['baseline_mb']) / (trl['peak_mb'] - trl['baseline_mb']):.2f}x")
    if ("ours", "lora") in figures and ("ours", "full") in figures:
        lora, full = figures[("ours", "lora")], figures[("ours", "full")]
        print(f"ours LoRA-DPO / full DPO peak above baseline: "
              f"{(lora['peak_mb'] - lora['baseline_mb']) / (full['peak_mb'] - full['baseline_mb']):.2f}x")


if __name__ == "__main__":
    main()

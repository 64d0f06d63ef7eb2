"""What each training mode costs, on the same base model and data: step time and peak memory.

LoRA against full fine-tuning (the adapter saves gradients and AdamW state for all but ~1% of
the weights), and distillation against plain pretraining (the teacher's extra forward pass).
Each mode runs in its own process; memory is its peak RSS (VmHWM) above the same baseline
(torch, peft and the engine imported).

    python benchmarks/bench_modes.py [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys
import peft, psutil  # every mode pays for the same libraries before the baseline is read
from slm_core.config import load_recipe
from slm_core.train.loop import train
from slm_core.run import runs
config = load_recipe("quickstart-cpu", json.loads(sys.argv[1]))
baseline = psutil.Process().memory_info().rss / 2**20
train(config, sys.argv[2], progress=False)
hwm_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
rows = [m for m in runs.read_metrics(sys.argv[2]) if m["kind"] == "train"][2:]  # skip warm-up steps
times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
import os
state_mb = os.path.getsize(os.path.join(sys.argv[2], "checkpoints", "latest", "trainer_state.pt")) / 2**20
print(json.dumps({"step_s": sorted(times)[len(times) // 2], "peak_rss_mb": hwm_mb - baseline, "optimizer_mb": state_mb,
                  "status": runs.read_status(sys.argv[2])}))
"""

# A ~27M-parameter model: big enough that weights and optimizer state dominate the process baseline.
SHAPE = ["model.n_layer=8", "model.d_model=512", "model.n_head=8", "model.n_kv_head=4", "model.context_length=128",
         "data.max_chars=2000000", "train.batch_size=8", "train.precision=fp32", "train.eval_interval=1000",
         "train.ckpt_interval=1000", "train.sample_prompts=[]", "train.eval_batches=1"]


def run_mode(root: Path, name: str, overrides: list[str]) -> dict:
    env = {**os.environ, "SLM_RUNS_DIR": str(root)}
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(overrides), str(root / name)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    steps = [f"train.max_steps={args.steps}"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {"pretrain (base)": run_mode(root, "base", SHAPE + steps)}
        base = str(root / "base")
        results["full fine-tune"] = run_mode(root, "ft", SHAPE + steps + ["train.mode=finetune", f"train.init_from={base}"])
        results["LoRA r=8 (attention)"] = run_mode(root, "lora", SHAPE + steps + [
            "train.mode=lora", f"train.init_from={base}", "lora.targets=attention"])
        results["LoRA r=8 (all linears)"] = run_mode(root, "lora_all", SHAPE + steps + [
            "train.mode=lora", f"train.init_from={base}", "lora.targets=all"])
        results["distill (teacher = base)"] = run_mode(root, "kd", SHAPE + steps + [
            "train.mode=distill", f"distill.teacher={base}", "model.n_layer=4"])
        results["pretrain (same student)"] = run_mode(root, "student", SHAPE + steps + ["model.n_layer=4"])
    # Optimizer state is measured as the size of the AdamW state the run checkpointed (it is what stays
    # resident all run); peak RSS also holds the data pipeline and model loading, which all modes share.
    print(f"{'mode':<28}{'step s (median)':>16}{'peak MB above baseline':>24}{'AdamW state MB':>16}")
    for name, row in results.items():
        print(f"{name:<28}{row['step_s']:>16.3f}{row['peak_rss_mb']:>24.0f}{row['optimizer_mb']:>16.1f}")
    ft, lora = results["full fine-tune"], results["LoRA r=8 (attention)"]
    kd, student = results["distill (teacher = base)"], results["pretrain (same student)"]
    print(f"\nLoRA / full fine-tune: step time {lora['step_s'] / ft['step_s']:.2f}x, "
          f"peak memory {lora['peak_rss_mb'] / ft['peak_rss_mb']:.2f}x "
          f"({ft['peak_rss_mb'] - lora['peak_rss_mb']:.0f} MB less), AdamW state "
          f"{lora['optimizer_mb']:.1f} MB vs {ft['optimizer_mb']:.1f} MB")
    print(f"distill / pretrain (4-layer student): step time {kd['step_s'] / student['step_s']:.2f}x")


if __name__ == "__main__":
    main()

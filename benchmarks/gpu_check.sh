#!/usr/bin/env bash
# One-GPU check (under 8 minutes on an H100/H200): GPT-2 small (124M) in bf16 with SDPA attention,
# fused AdamW and torch.compile. Prints tokens/s, MFU, peak memory and time to the first step for our
# loop, then the same for nanoGPT's train.py from the checkout given as $1 (without one: transformers'
# GPT-2 in the same kind of loop). Results go to $OUT_DIR/gpu_check.jsonl (default ./gpu-check).
#
#   benchmarks/gpu_check.sh [PATH_TO_NANOGPT_CHECKOUT]
#   STEPS=60 BATCH=16 ACCUM=4 benchmarks/gpu_check.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-gpu-check}"
STEPS="${STEPS:-60}"
BATCH="${BATCH:-16}"
ACCUM="${ACCUM:-4}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA GPU"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
common=(--steps "$STEPS" --batch "$BATCH" --accum "$ACCUM" --out "$OUT_DIR")
timeout 300 python benchmarks/bench_gpu.py ours "${common[@]}"
if [[ -n "${1:-}" ]]; then
  timeout 200 python benchmarks/bench_gpu.py nanogpt --nanogpt "$1" "${common[@]}"
else
  timeout 200 python benchmarks/bench_gpu.py transformers "${common[@]}"
fi
python - "$OUT_DIR/gpu_check.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])][-2:]
print(f"\n{'':<14}{'tokens/s':>11}{'MFU':>8}{'peak MB':>9}{'first step s':>14}")
for r in rows:
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
    print(f"{r['side']:<14}{r['tokens_per_sec']:>11,}{mfu:>8}{str(r.get('peak_mem_mb')):>9}{r['time_to_first_step_s']:>14}")
if len(rows) == 2 and rows[1]["tokens_per_sec"]:
    print(f"ratio tokens/s slm_core / {rows[1]['side']}: {rows[0]['tokens_per_sec'] / rows[1]['tokens_per_sec']:.2f}x")
PY

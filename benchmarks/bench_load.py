"""Loading a real-sized Hugging Face checkpoint: our loader against transformers' from_pretrained.

Writes a random checkpoint shaped like Llama-3.2-1B (1.24B parameters, bf16 as published, tied
embeddings, llama3 RoPE) once, then loads it in a fresh process per loader and reports wall time
and peak RSS (VmHWM) above the process baseline (torch + the loader's library imported), as a
multiple of the weight bytes. "load" is the loader call alone; "+forward" adds one 8-token forward
pass, which touches every weight, so memory-mapped pages are counted too.

    python benchmarks/bench_load.py [--folder /tmp/slm-bench-llama32-1b] [--layers 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
          "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
          "num_hidden_layers": 16, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
          "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001,
          "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}}

WORKER = r"""
import json, sys, time
import torch
which, folder = sys.argv[1], sys.argv[2]
if which == "ours":
    from slm_core.models.load import load_model
else:
    import transformers
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
import psutil
base = psutil.Process().memory_info().rss / 2**20
start = time.perf_counter()
if which == "ours":
    model = load_model(folder).model
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
load_s = time.perf_counter() - start
load_mb = hwm() - base
with torch.no_grad():
    out = model(torch.arange(8)[None])
forward_s = time.perf_counter() - start
print(json.dumps({"load_s": load_s, "load_mb": load_mb, "forward_s": forward_s, "forward_mb": hwm() - base}))
"""


def write_checkpoint(folder: Path, layers: int) -> int:
    """Random bf16 weights with Llama's names, written tensor by tensor; returns the weight bytes."""
    import torch
    from safetensors.torch import save_file

    config = dict(CONFIG, num_hidden_layers=layers)
    d, f, kv = config["hidden_size"], config["intermediate_size"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], d), "model.norm.weight": (d,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    marker = folder / "model.safetensors"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        state = {k: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
        save_file(state, str(folder / ".model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(folder / ".model.safetensors.tmp", marker)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    count = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        count += n
    return count


def run(which: str, folder: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", WORKER, which, str(folder)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/slm-bench-llama32-1b")
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    folder = Path(args.folder)
    params = write_checkpoint(folder, args.layers)
    weight_mb = params * 2 / 2**20
    print(f"checkpoint: {params / 1e9:.2f}B parameters, {weight_mb:.0f} MiB of bf16 weights in {folder}")
    results = {which: run(which, folder) for which in ("transformers", "ours")}
    print(f"{'loader':<14}{'load s':>9}{'load RSS':>12}{'+fwd s':>9}{'+fwd RSS':>12}")
    for which, r in results.items():
        print(f"{which:<14}{r['load_s']:>9.2f}{r['load_mb'] / weight_mb:>11.2f}x{r['forward_s']:>9.2f}"
              f"{r['forward_mb'] / weight_mb:>11.2f}x")
    ours, theirs = results["ours"], results["transformers"]
    print(f"ours / transformers: load time {ours['load_s'] / theirs['load_s']:.2f}x (target <= 1.0), "
          f"peak RSS after forward {ours['forward_mb'] / weight_mb:.2f}x the weight bytes (target <= 1.2)")


if __name__ == "__main__":
    main()

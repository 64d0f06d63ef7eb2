"""GGUF export of real-shaped models: `slm export --format gguf` against llama.cpp's own convert_hf_to_gguf.py
(+ its quantizer for the levels the converter cannot write), on the same folder.

Builds random-weight bf16 folders with the published configs of Qwen2.5-0.5B and Llama-3.2-1B and their real
tokenizers (llama.cpp's reference vocab files in ../shared/data/vocab, read by transformers), once. Then, per
level and per tool, one fresh process: wall time and its own peak RSS (os.wait4), and the file size. llama.cpp's
side: the converter writes f16/q8_0 directly; q4_0/q4_k_m are its f16 file through llama.cpp's quantizer
(llama-cpp-python's llama_model_quantize), the route its README gives. Where llama-cpp-python is installed, greedy
decode tokens/s of both files (same weights, so the same tokens) at 2 threads.

    python benchmarks/bench_gguf.py LLAMA_CPP_CHECKOUT [--models qwen2.5-0.5b,llama-3.2-1b]
        [--levels f16,q8_0,q4_0,q4_k_m] [--work /tmp/slm-bench-gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB_DIR = ROOT.parent / "shared" / "data" / "vocab"

MODELS = {
    "qwen2.5-0.5b": ("qwen2", {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "use_sliding_window": False,
        "sliding_window": 32768, "max_window_layers": 21, "torch_dtype": "bfloat16"}),
    "llama-3.2-1b": ("llama-bpe", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "num_hidden_layers": 16,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}),
}
# Llama 3's tokenizer.json prepends <|begin_of_text|>; the reference vocab read back by transformers does not, and
# llama.cpp's converter names the pre-tokenizer by hashing encoded ids, so the folder gets Llama 3's post-processor.
LLAMA3_POST = {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                        "tokens": ["<|begin_of_text|>"]}}}


def build_folder(work: Path, model: str) -> Path:
    """config.json, random bf16 model.safetensors (tensor by tensor) and the real tokenizer; once."""
    import torch
    from safetensors.torch import save_file

    vocab, config = MODELS[model]
    folder = work / model
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer(folder, vocab, config["vocab_size"])
    d, f = config["hidden_size"], config["intermediate_size"]
    head = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], d), "model.norm.weight": (d,)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
        if config["model_type"] == "qwen2":
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(folder / ".model.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(folder / ".model.safetensors.tmp", folder / "model.safetensors")
    return folder


def _tokenizer(folder: Path, vocab: str, size: int) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(VOCAB_DIR), gguf_file=f"ggml-vocab-{vocab}.gguf").save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < size]
    if vocab == "llama-bpe":
        spec["post_processor"] = LLAMA3_POST
    (folder / "tokenizer.json").write_text(json.dumps(spec))


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; its wall seconds and its own peak RSS (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed:\n{output[-3000:]}")
    return {"s": seconds, "rss_mb": usage.ru_maxrss / 1024}


QUANTIZE = ("import ctypes, sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
            "p.ftype = int(sys.argv[3]); p.nthread = 2; "
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")


def ours(folder: Path, out: Path, level: str) -> tuple[dict, Path]:
    run = measured([sys.executable, "-m", "slm_core", "export", str(folder), "--format", "gguf", "--gguf-type",
                    level, "--out", str(out), "--overwrite"], env={"PYTHONPATH": str(ROOT)})
    return run, next(out.glob("*.gguf"))


def theirs(checkout: Path, folder: Path, out: Path, level: str) -> tuple[dict, Path]:
    import gguf

    out.mkdir(parents=True, exist_ok=True)
    direct = level if level in ("f16", "q8_0") else "f16"
    target = out / f"llama-cpp-{direct}.gguf"
    run = measured([sys.executable, str(checkout / "convert_hf_to_gguf.py"), str(folder), "--outtype", direct,
                    "--outfile", str(target)])  # with the checkout's own gguf-py: it needs newer enums than 0.19
    if direct == level:
        return run, target
    final = out / f"llama-cpp-{level}.gguf"
    ftype = {"q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K",
             "q5_0": "MOSTLY_Q5_0", "q4_1": "MOSTLY_Q4_1", "q5_1": "MOSTLY_Q5_1"}[level]
    step = measured([sys.executable, "-c", QUANTIZE, str(target), str(final),
                     str(int(gguf.LlamaFileType[ftype]))])
    target.unlink()
    return {"s": run["s"] + step["s"], "rss_mb": max(run["rss_mb"], step["rss_mb"])}, final


def decode_speed(path: Path, tokens: int = 32) -> float | None:
    """llama.cpp's greedy decode tokens/s for the file (2 threads), in a fresh process; None without bindings."""
    code = ("import sys, time, llama_cpp; m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, n_threads=2, "
            "verbose=False); it = m.generate([1, 2, 3, 4], temp=0.0, top_k=1); next(it); t = time.perf_counter(); "
            f"[next(it) for _ in range({tokens})]; print({tokens} / (time.perf_counter() - t))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("llama_cpp", type=Path, help="a llama.cpp checkout (convert_hf_to_gguf.py at its root)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--levels", default="f16,q8_0,q4_0,q4_k_m")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slm-bench-gguf"))
    parser.add_argument("--no-speed", action="store_true", help="skip llama.cpp decode tokens/s")
    args = parser.parse_args()
    try:
        import llama_cpp  # noqa: F401
        has_bindings = True
    except Exception:
        has_bindings = False
    print("model | level | ours s | llama.cpp s | ours peak RSS MB | llama.cpp peak RSS MB | ours MB | llama.cpp MB | "
          "size ratio | ours tok/s | llama.cpp tok/s", flush=True)
    for model in args.models.split(","):
        folder = build_folder(args.work, model)
        for level in args.levels.split(","):
            if level not in ("f16", "q8_0") and not has_bindings:
                print(f"{model} | {level} | skipped: llama.cpp's quantizer (llama-cpp-python) is not installed")
                continue
            a, ours_file = ours(folder, args.work / "out" / model / f"ours-{level}", level)
            b, their_file = theirs(args.llama_cpp, folder, args.work / "out" / model / f"llama-cpp-{level}", level)
            sa, sb = ours_file.stat().st_size / 2**20, their_file.stat().st_size / 2**20
            speeds = ("", "")
            if has_bindings and not args.no_speed:
                speeds = tuple(f"{s:.1f}" if s else "n/a" for s in (decode_speed(ours_file), decode_speed(their_file)))
            print(f"{model} | {level} | {a['s']:.1f} | {b['s']:.1f} | {a['rss_mb']:.0f} | {b['rss_mb']:.0f} | "
                  f"{sa:.1f} | {sb:.1f} | {sa / sb:.3f} | {speeds[0]} | {speeds[1]}", flush=True)
            their_file.unlink()


if __name__ == "__main__":
    main()

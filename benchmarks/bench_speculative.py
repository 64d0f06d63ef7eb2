"""Speculative decoding side by side, in one run: a trained teacher alone against the teacher with its shrunk,
distilled student as the draft (slm_core.infer.speculative), at temperature 0 and 0.7, on our native path and on
transformers' assisted generation (`generate(..., assistant_model=...)`) over the Hugging Face exports of the same
two models. Target (issue 27): >= 1.5x the teacher alone, with the same greedy text.

    python benchmarks/bench_speculative.py --teacher RUN [--draft auto|RUN] [--tokens 128] [--dtype fp32]

Decode tokens/s counts every new token over the whole decode (prefill excluded: both paths share it); each figure
is the best of --repeats runs after a warm-up. The acceptance rate is the share of drafted tokens kept; transformers
does not report its own, so its row shows only the speed-up. Greedy rows say whether the drafted text equals the
teacher's alone token for token. Sampled rows use fixed seeds; their texts differ by design (same distribution).

Measured 2026-12-05 (2 cores shared with several training runs, load average 10-13: speeds swung 4x between rows,
so read the acceptance rates, not the speeds): a 52.1M Llama-shaped teacher (10 layers, 640 wide, 2048-token BPE)
trained only 24 steps, its 2-layer `slm shrink` student distilled 85 steps, bf16, 64 tokens: greedy acceptance
12% (k 1.4), 0.94x, same text; temperature 0.7 acceptance 61% (k 4.2), 3.75x (noise-inflated); transformers
assisted 0.59x (greedy text differed from its own) and 1.86x. The same pair 40 distillation steps earlier
accepted 61% greedy (1.15x). Target 1.5x greedy not met with so little training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from slm_core.infer.decoder import Decoder
from slm_core.infer.engine import decode_one, pick_dtype
from slm_core.infer.sampling import SamplingParams
from slm_core.infer.speculative import Speculator, check_draft, resolve_draft
from slm_core.models.load import load_model
from slm_core.post.export import export_model

PROMPT = "Once upon a time there was a little"


def _ours(target, draft, ids, tokens, temperature, seed, dtype_arg):
    """(new tokens, decode seconds, speculator or None): one reply on a fresh one-slot decoder, prefill untimed."""
    one_row_half = None if dtype_arg == "auto" else False
    decoder = Decoder(target, slots=1, max_len=len(ids) + tokens, one_row_half=one_row_half)
    speculator = None if draft is None else Speculator(draft, decoder.max_len, one_row_half)
    params = SamplingParams(tokens, temperature=temperature, top_k=0, seed=seed)
    stream = decode_one(decoder, ids, params, (), speculator)
    out = [next(stream)]  # the prefill's token (and, drafting, the first round)
    start = time.perf_counter()
    out += list(stream)
    return out, time.perf_counter() - start, speculator


def _best(fn, repeats):
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[1])


def _hf_folder(loaded, folder: Path) -> Path:
    if not (folder / "config.json").exists():
        export_model(loaded.model.float(), loaded.tokenizer, loaded.config, folder, "hf", source=str(loaded.path))
    return folder


def _theirs(model, assistant, ids, tokens, temperature, seed):
    """transformers' generate (assisted with `assistant`), EOS off: (new tokens, seconds)."""
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=temperature > 0, pad_token_id=0)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        torch.manual_seed(seed)
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    start = time.perf_counter()
    out = model.generate(torch.tensor([ids]), **kwargs)
    return out[0, len(ids):].tolist(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--draft", default="auto")
    parser.add_argument("--checkpoint", default="latest", choices=["best", "latest"])
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip transformers")
    parser.add_argument("--out", default="/tmp/slm-bench-speculative")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher = load_model(args.teacher, tag=args.checkpoint, runs_dir=args.runs_dir)
    source, line = resolve_draft(args.draft, args.teacher, args.runs_dir)
    student = load_model(source, tag=args.checkpoint, runs_dir=args.runs_dir)
    check_draft(teacher.tokenizer, student.tokenizer, teacher.model.config.vocab_size,
                student.model.config.vocab_size, source)
    dtype = pick_dtype(teacher.model, args.dtype)
    target, draft = teacher.model.to(dtype).eval(), student.model.to(dtype).eval()
    n_t = sum(p.numel() for p in target.parameters())
    n_d = sum(p.numel() for p in draft.parameters())
    ids = teacher.tokenizer.encode(PROMPT)
    print(f"teacher {args.teacher}: {n_t / 1e6:.1f}M parameters, {target.config.n_layer} layers; {line}: "
          f"{n_d / 1e6:.1f}M, {draft.config.n_layer} layers; {dtype}, {args.threads} threads, "
          f"{args.tokens} new tokens, prompt {len(ids)} tokens", flush=True)

    rows = []
    for temperature in (0.0, 0.7):
        seed = 1234
        _ours(target, None, ids, 8, temperature, seed, args.dtype)  # warm-up
        alone, alone_s, _ = _best(lambda: _ours(target, None, ids, args.tokens, temperature, seed, args.dtype),
                                  args.repeats)
        spec_out, spec_s, spec = _best(lambda: _ours(target, draft, ids, args.tokens, temperature, seed,
                                                     args.dtype), args.repeats)
        st = spec.stats()
        rows.append(("ours", temperature, len(alone) / alone_s, len(spec_out) / spec_s, alone_s / spec_s,
                     st["draft_accept_rate"], st["draft_k"], spec_out == alone if temperature == 0 else None))
        print(rows[-1], flush=True)

    if not args.no_peer:
        from transformers import AutoModelForCausalLM

        out = Path(args.out)
        hf_t = AutoModelForCausalLM.from_pretrained(_hf_folder(teacher, out / "teacher"), dtype=dtype).eval()
        hf_d = AutoModelForCausalLM.from_pretrained(_hf_folder(student, out / "student"), dtype=dtype).eval()
        with torch.inference_mode():
            for temperature in (0.0, 0.7):
                _theirs(hf_t, None, ids, 8, temperature, 1)
                alone, alone_s = _best(lambda: _theirs(hf_t, None, ids, args.tokens, temperature, 1), args.repeats)
                assisted, assisted_s = _best(lambda: _theirs(hf_t, hf_d, ids, args.tokens, temperature, 1),
                                             args.repeats)
                rows.append(("transformers", temperature, len(alone) / alone_s, len(assisted) / assisted_s,
                             alone_s / assisted_s, None, None, assisted == alone if temperature == 0 else None))
                print(rows[-1], flush=True)

    print(f"\n{'path':<13}{'temp':>5}{'alone tok/s':>13}{'drafted tok/s':>15}{'speed-up':>10}{'accept':>8}"
          f"{'mean k':>8}  same greedy text")
    for path, temperature, a, s, x, acc, k, same in rows:
        print(f"{path:<13}{temperature:>5.1f}{a:>13.1f}{s:>15.1f}{x:>9.2f}x"
              f"{'' if acc is None else f'{acc:.0%}':>8}{'' if k is None else f'{k:.1f}':>8}  "
              f"{'' if same is None else ('yes' if same else 'NO')}")
    ours = {r[1]: r for r in rows if r[0] == "ours"}
    theirs = {r[1]: r for r in rows if r[0] == "transformers"}
    for temperature in ours:
        if temperature in theirs:
            print(f"temperature {temperature}: ours drafted / transformers assisted = "
                  f"{ours[temperature][3] / theirs[temperature][3]:.2f}x")


if __name__ == "__main__":
    main()

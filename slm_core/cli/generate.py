"""`slm generate`: stream a completion from a model."""

from __future__ import annotations

import sys

import torch

from slm_core.cli.flags import add_runs_dir
from slm_core.infer.engine import pick_dtype
from slm_core.infer.engine_choice import ENGINES, Choice, choose, native_threads, start_build
from slm_core.infer.generate import encode_prompt, stream_text
from slm_core.infer.onnx import OnnxEngine
from slm_core.infer.sampling import SamplingParams
from slm_core.infer.speculative import check_draft, resolve_draft
from slm_core.models.load import load_model
from slm_core.models.quantized import is_quantized
from slm_core.run.runs import check_runs_dir
from slm_core.validate import check_device, validate_sampling

# genai's text reaches the terminal at most this often, each write carrying every token decoded meanwhile: a write
# and flush per token is a share of a small model's step (benchmarks/bench_engine_choice.py), and 50 a second reads
# as a smooth stream.
PRINT_INTERVAL_S = 0.02


def add_generate_parser(sub) -> None:
    parser = sub.add_parser("generate", help="generate text from a run, checkpoint or exported model")
    parser.add_argument("model", help="run name, checkpoint folder, quantized or Hugging Face folder, .gguf file, "
                                      "or Hub id (org/name: the Hugging Face cache, else downloaded)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--raw", action="store_true", help="do not apply the model's instruction template")
    parser.add_argument("--stop", action="append", default=[], help="end the text before this string (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="weights for decoding; auto: bf16 where the CPU/GPU computes it natively, else fp32 with "
                             "an fp16 (or bf16) copy for the one-row steps of models from 40M parameters; fp32: exact")
    parser.add_argument("--draft", default=None, metavar="MODEL",
                        help="speculative decoding: a smaller model with the same tokenizer drafts tokens the model "
                             "checks in one pass (same output distribution; same greedy text); auto: a run made from "
                             "this model by `slm shrink`")
    parser.add_argument("--engine", default="auto", choices=ENGINES,
                        help="auto: the faster here of native torch and the model's onnxruntime-genai export, timed "
                             "once and cached (slm_core.infer.engine_choice); native; onnx (its genai export)")
    add_runs_dir(parser)


def cmd_generate(args) -> int:
    validate_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    check_device(args.device)
    runs_dir = check_runs_dir(args.runs_dir)
    if args.device != "cpu" and args.engine == "auto":
        choice = Choice("native", args.model, f"--device {args.device}: genai exports here are CPU builds")
    else:
        choice = choose(args.model, args.checkpoint, args.engine, args.dtype, None, runs_dir, draft=bool(args.draft))
    if choice.engine == "onnx":
        print(f"[{choice.line()}]", file=sys.stderr, flush=True)
        return _generate_genai(args, choice.folder, choice.threads)
    loaded = choice.loaded or load_model(args.model, tag=args.checkpoint, device=args.device, runs_dir=runs_dir)
    # Said once the model loads: a refusal to load stays the one line the user reads.
    print(f"[{choice.line()}]", file=sys.stderr, flush=True)

    if not is_quantized(loaded.model):
        loaded.model.to(pick_dtype(loaded.model, args.dtype))
    if args.device == "cpu":
        torch.set_num_threads(choice.threads or native_threads(loaded.model))  # as the choice measured it
    draft = _load_draft(args, loaded) if args.draft else None
    stats: dict = {}
    templated = loaded.template or getattr(loaded.tokenizer, "chat_template", None)  # a chat reply, not a continuation
    sys.stdout.write(args.prompt if not templated or args.raw else "")
    for delta in stream_text(loaded, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                             args.repetition_penalty, args.seed, stats=stats, use_template=not args.raw,
                             stop=tuple(args.stop), one_row_half=None if args.dtype == "auto" else False,
                             draft=draft):
        sys.stdout.write(delta)
        sys.stdout.flush()
    ttft = stats.get("ttft_s")
    print(f"\n[{stats.get('tokens', 0)} tokens, {stats.get('tokens_per_sec', 0):.1f} tokens/s"
          + (f", first token {ttft * 1000:.0f} ms" if ttft is not None else "") + _draft_stats(stats) + "]",
          file=sys.stderr)
    # auto on a run with no genai export: built now, after the reply (a build beside the decode would slow it), in a
    # process that outlives this one; the next run times both engines and keeps the faster.
    line = start_build(choice)
    if line:
        print(f"[{line}]", file=sys.stderr, flush=True)
    return 0


def _generate_genai(args, folder, threads=None) -> int:
    """cmd_generate on onnxruntime-genai's own Generator loop (the same prompt ids, stop strings and stats line),
    on the thread count the choice measured fastest (None: genai's default)."""
    runtime = OnnxEngine(folder, threads=threads, slots=1)
    try:
        templated = runtime.template or runtime.tokenizer.chat_template
        sys.stdout.write(args.prompt if not templated or args.raw else "")
        ids = encode_prompt(runtime.tokenizer, runtime.template, args.prompt, not args.raw)
        params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                args.repetition_penalty, args.seed, tuple(args.stop))
        stats: dict = {}
        for delta in runtime.stream(ids, params, stats, interval_s=PRINT_INTERVAL_S):
            sys.stdout.write(delta)
            sys.stdout.flush()
    finally:
        runtime.close()
    ttft = stats.get("ttft_s")
    print(f"\n[{stats.get('tokens', 0)} tokens, {stats.get('tokens_per_sec', 0):.1f} tokens/s"
          + (f", first token {ttft * 1000:.0f} ms" if ttft is not None else "") + "]", file=sys.stderr)
    return 0


def _load_draft(args, loaded):
    """The --draft model in the target's dtype, after its tokenizer is checked; says which it is on stderr."""
    source, line = resolve_draft(args.draft, args.model, args.runs_dir)
    draft = load_model(source, device=args.device, runs_dir=check_runs_dir(args.runs_dir))
    check_draft(loaded.tokenizer, draft.tokenizer, loaded.model.config.vocab_size, draft.model.config.vocab_size,
                args.draft if args.draft != "auto" else source)
    if not is_quantized(draft.model):
        draft.model.to(next(loaded.model.parameters()).dtype)
    print(f"[{line}]", file=sys.stderr)
    return draft.model


def _draft_stats(stats: dict) -> str:
    """', draft acceptance 78% (k 4.6), speed-up 1.8x': how the draft paid off, or '' without one."""
    if "draft_accept_rate" not in stats:
        return ""
    speedup = stats.get("speedup")
    return (f", draft acceptance {stats['draft_accept_rate']:.0%} (k {stats.get('draft_k', 0):.1f})"
            + (f", speed-up {speedup:.2f}x" if speedup else ""))

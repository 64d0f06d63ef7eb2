"""The `slm` command: a table from subcommand to one typed function each.

Errors a person can fix print one line and exit 2; no tracebacks. The Studio launches the same
`python -m slm_core train ...` entry point, so every UI run is reproducible from the shell.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from slm_core.errors import SLMError


def _add_run_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=None, help="where runs live (default: $SLM_RUNS_DIR or ./runs)")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting, e.g. --set train.max_steps=200 (repeatable)")


# ---- presets ---------------------------------------------------------------------------------

def add_presets_parser(sub) -> None:
    parser = sub.add_parser("presets", help="list model and recipe presets with parameters and memory")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size for the training-memory estimate")


def cmd_presets(args) -> int:
    from slm_core.config import list_presets, load_model_preset, preset_description
    from slm_core.models.estimate import describe

    print(f"{'model preset':<18}{'family':<8}{'params':>10}{'train mem':>12}{'infer mem':>12}  description")
    for name in list_presets("models"):
        config = load_model_preset(name)
        info = describe(config, batch_size=args.batch_size, precision="bf16")
        print(f"{name:<18}{config.family:<8}{_human(info['params']['total']):>10}"
              f"{_mb(info['training']['total_mb']):>12}{_mb(info['inference']['total_mb']):>12}  "
              f"{preset_description('models', name)[:70]}")
    print(f"\n(training memory at batch {args.batch_size}, full context, bf16 autocast with fp32 master weights)\n")
    print(f"{'recipe':<24}description")
    for name in list_presets("recipes"):
        print(f"{name:<24}{preset_description('recipes', name)[:90]}")
    return 0


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _mb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


# ---- train / resume --------------------------------------------------------------------------

def add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="start a run from a recipe preset or a YAML config")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="quickstart-cpu", help="recipe preset name (see `slm presets`)")
    source.add_argument("--config", help="a recipe YAML file (e.g. a run's config.yaml)")
    parser.add_argument("--mode", choices=["pretrain", "distill", "lora", "finetune"],
                        help="shorthand for --set train.mode=...")
    parser.add_argument("--name", help="run name (default: <preset>-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_location(parser)
    _add_overrides(parser)
    _add_launch_flags(parser)


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    dist = parser.add_argument_group("several processes (launched through torchrun)")
    dist.add_argument("--nproc", type=int, default=1, help="processes on this machine (one per GPU)")
    dist.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    dist.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    dist.add_argument("--rdzv-endpoint", help="HOST:PORT of machine 0, the same on every machine")


def _check_strategy(config, args) -> None:
    """What train.strategy=fsdp cannot do is refused before torchrun starts any process."""
    from slm_core.train.fsdp import check_supported

    check_supported(config, max(args.nproc, 1) * max(args.nnodes, 1))


def _relaunch(args, run_dir, extra: list[str]) -> Optional[int]:
    """Under `--nproc N` / `--nnodes M` (and not already a torchrun rank): run the same command through
    torchrun and return its exit code; None means carry on in this process."""
    from slm_core.train import distributed

    if (args.nproc > 1 or args.nnodes > 1) and not distributed.under_torchrun():
        entry = distributed.strip_launch_flags(args.argv) + extra  # every rank must agree on the run folder
        return distributed.launch(entry, run_dir, args.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint)
    return None


def cmd_train(args) -> int:
    from slm_core.run import runs
    from slm_core.config import load_recipe, load_run_config
    from slm_core.train.loop import train
    from slm_core.validate import check_runs_dir, preflight_train

    overrides = list(args.overrides) + ([f"train.mode={args.mode}"] if args.mode else [])
    if args.config:
        config = load_run_config(args.config).with_overrides(overrides)
    else:
        config = load_recipe(args.preset, overrides)
    runs.use_runs_dir(args.runs_dir)  # run names in train.init_from / distill.teacher are looked up here
    root = check_runs_dir(args.runs_dir)
    name = runs.valid_run_name(args.name) if args.name else runs.new_run_name(config.preset or "run", root)
    run_dir = root / name
    if (run_dir / "status.json").exists() and os.environ.get("RANK", "0") == "0":  # other ranks find rank 0's
        raise SLMError(f"a run named '{name}' already exists in {root}; pick another --name or `slm resume {name}`")
    _check_strategy(config, args)
    preflight_train(config, run_dir)
    print(f"run: {run_dir}", flush=True)
    code = _relaunch(args, run_dir, ["--name", name, "--runs-dir", str(root)])
    if code is not None:
        return code
    result = train(config, run_dir, progress=not args.quiet, callback=_print_event)
    return _report(result)


def add_resume_parser(sub) -> None:
    parser = sub.add_parser("resume", help="continue a stopped or crashed run from its last checkpoint")
    parser.add_argument("run", help="run name or directory")
    parser.add_argument("--quiet", action="store_true")
    _add_run_location(parser)
    _add_overrides(parser)
    _add_launch_flags(parser)  # resuming on another process count works: checkpoints hold the full state


def cmd_resume(args) -> int:
    from slm_core.run import runs
    from slm_core.config import load_run_config
    from slm_core.train.loop import train
    from slm_core.validate import check_runs_dir

    runs.use_runs_dir(args.runs_dir)
    run_dir = runs.resolve_run(args.run, check_runs_dir(args.runs_dir))
    if not (run_dir / "config.yaml").exists():
        raise SLMError(f"{run_dir} is not a run (no config.yaml): give a run name from `slm runs` or a run folder")
    status = runs.read_status(run_dir)
    if status.get("state") in ("running", "paused") and os.environ.get("RANK", "0") == "0":
        raise SLMError(f"run '{run_dir.name}' is still running (pid {status.get('pid')}); stop it first")
    config = load_run_config(run_dir / "config.yaml").with_overrides(args.overrides)
    _check_strategy(config, args)
    print(f"resuming: {run_dir}", flush=True)
    code = _relaunch(args, run_dir, ["--runs-dir", str(run_dir.parent)])
    if code is not None:
        return code
    return _report(train(config, run_dir, resume=True, progress=not args.quiet, callback=_print_event))


def _print_event(event: dict) -> None:
    if event.get("kind") == "eval":
        print(f"\nstep {event['step']}: val_loss {event['val_loss']:.4f} (ppl {event['val_ppl']:.2f})", flush=True)
    elif event.get("kind") == "sample":
        print(f"  sample [{event['prompt']}] {event['text'][:200]!r}", flush=True)


def _report(result: dict) -> int:
    best = result.get("best_val_loss")
    print(f"{result.get('state')}: step {result['step']}, {result['tokens']:,} tokens"
          + (f", best val_loss {best:.4f}" if best is not None else ""))
    return 0


# ---- generate / runs -------------------------------------------------------------------------

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
    _add_run_location(parser)


def cmd_generate(args) -> int:
    from slm_core.run.checkpoint import load_model
    from slm_core.infer.generate import stream_text
    from slm_core.run.runs import use_runs_dir
    from slm_core.validate import check_device, check_runs_dir, validate_sampling

    validate_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    check_device(args.device)
    use_runs_dir(check_runs_dir(args.runs_dir))
    loaded = load_model(args.model, tag=args.checkpoint, device=args.device)
    from slm_core.infer.engine import pick_dtype
    from slm_core.models.quantized import is_quantized

    if not is_quantized(loaded.model):
        loaded.model.to(pick_dtype(loaded.model, args.dtype))
    stats: dict = {}
    templated = loaded.template or getattr(loaded.tokenizer, "chat_template", None)  # a chat reply, not a continuation
    sys.stdout.write(args.prompt if not templated or args.raw else "")
    for delta in stream_text(loaded, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                             args.repetition_penalty, args.seed, stats=stats, use_template=not args.raw,
                             stop=tuple(args.stop), one_row_half=None if args.dtype == "auto" else False):
        sys.stdout.write(delta)
        sys.stdout.flush()
    ttft = stats.get("ttft_s")
    print(f"\n[{stats.get('tokens', 0)} tokens, {stats.get('tokens_per_sec', 0):.1f} tokens/s"
          + (f", first token {ttft * 1000:.0f} ms" if ttft is not None else "") + "]", file=sys.stderr)
    return 0


def add_runs_parser(sub) -> None:
    parser = sub.add_parser("runs", help="list runs")
    _add_run_location(parser)


def cmd_runs(args) -> int:
    from slm_core.run.runs import list_runs
    from slm_core.validate import check_runs_dir

    rows = list_runs(check_runs_dir(args.runs_dir))
    if not rows:
        print("no runs yet: `slm train` starts one")
        return 0
    print(f"{'name':<36}{'state':<10}{'mode':<10}{'step':>12}{'tokens':>12}{'best val':>10}")
    for r in rows:
        best = f"{r['best_val_loss']:.4f}" if r.get("best_val_loss") is not None else "-"
        print(f"{r['name']:<36}{r['state']:<10}{r.get('mode') or '-':<10}"
              f"{str(r['step']) + '/' + str(r.get('max_steps') or '?'):>12}{r['tokens']:>12,}{best:>10}")
    return 0


# ---- the table -------------------------------------------------------------------------------

def _commands() -> dict[str, tuple[Callable, Callable]]:
    from slm_core.cli import data as data_cmd
    from slm_core.post import evaluate
    from slm_core.post import export
    from slm_core.models import quantized as quantize
    from slm_core.run import queue as runqueue
    from slm_core.infer import serve
    from slm_core.train import shrink

    table = {
        "presets": (add_presets_parser, cmd_presets),
        "train": (add_train_parser, cmd_train),
        "resume": (add_resume_parser, cmd_resume),
        "generate": (add_generate_parser, cmd_generate),
        "eval": (evaluate.add_eval_parser, evaluate.cmd_eval),
        "runs": (add_runs_parser, cmd_runs),
        "quantize": (quantize.add_quantize_parser, quantize.cmd_quantize),
        "export": (export.add_export_parser, export.cmd_export),
        "serve": (serve.add_serve_parser, serve.cmd_serve),
        "data": (data_cmd.add_data_parser, data_cmd.cmd_data),
        "queue": (runqueue.add_queue_parser, runqueue.cmd_queue),
        "shrink": (shrink.add_shrink_parser, shrink.cmd_shrink),
    }
    return table


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="slm", description="Train, fine-tune, quantize and chat with small LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    table = _commands()
    for add_parser, _ in table.values():
        add_parser(sub)
    return parser, table


def main(argv: list[str] | None = None) -> int:
    parser, table = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `slm train --nproc N` hands these to each rank
    try:
        return table[args.command][1](args)
    except SLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`slm train` and `slm resume`: a run in this process, or on N processes through torchrun."""

from __future__ import annotations

import os
from typing import Optional

from slm_core.cli.flags import add_launch_flags, add_overrides, add_runs_dir
from slm_core.config import load_recipe, load_run_config
from slm_core.errors import SLMError
from slm_core.run import runs
from slm_core.run.runs import check_runs_dir
from slm_core.train import distributed
from slm_core.train.fsdp import check_supported
from slm_core.train.loop import train
from slm_core.train.preflight import preflight_train


def add_train_parser(sub) -> None:
    parser = sub.add_parser("train", help="start a run from a recipe preset or a YAML config")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="quickstart-cpu", help="recipe preset name (see `slm presets`)")
    source.add_argument("--config", help="a recipe YAML file (e.g. a run's config.yaml)")
    parser.add_argument("--mode", choices=["pretrain", "distill", "lora", "finetune", "dpo", "orpo", "grpo"],
                        help="shorthand for --set train.mode=...")
    parser.add_argument("--name", help="run name (default: <preset>-<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runs_dir(parser)
    add_overrides(parser)
    add_launch_flags(parser)


def _check_strategy(config, args) -> None:
    """What train.strategy=fsdp cannot do is refused before torchrun starts any process."""
    check_supported(config, max(args.nproc, 1) * max(args.nnodes, 1))


def _relaunch(args, run_dir, extra: list[str]) -> Optional[int]:
    """Under `--nproc N` / `--nnodes M` (and not already a torchrun rank): run the same command through
    torchrun and return its exit code; None means carry on in this process."""
    if (args.nproc > 1 or args.nnodes > 1) and not distributed.under_torchrun():
        entry = distributed.strip_launch_flags(args.argv) + extra  # every rank must agree on the run folder
        return distributed.launch(entry, run_dir, args.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint)
    return None


def cmd_train(args) -> int:
    overrides = list(args.overrides) + ([f"train.mode={args.mode}"] if args.mode else [])
    if args.config:
        config = load_run_config(args.config).with_overrides(overrides)
    else:
        config = load_recipe(args.preset, overrides)
    root = check_runs_dir(args.runs_dir)
    name = runs.valid_run_name(args.name) if args.name else runs.new_run_name(config.preset or "run", root)
    run_dir = root / name
    # other ranks find rank 0's; a run the queue handed to this process says "queued" (slm_core.run.queue.take_next)
    if (run_dir / "status.json").exists() and os.environ.get("RANK", "0") == "0" and \
            runs.read_status(run_dir).get("state") != "queued":
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
    add_runs_dir(parser)
    add_overrides(parser)
    add_launch_flags(parser)  # resuming on another process count works: checkpoints hold the full state


def cmd_resume(args) -> int:
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
        pairs = (f", reward accuracy {event['val_reward_accuracy']:.3f}, margin {event['val_reward_margin']:.3f}, "
                 f"choice accuracy {event['val_choice_accuracy']:.3f}") if "val_choice_accuracy" in event else ""
        print(f"\nstep {event['step']}: val_loss {event['val_loss']:.4f} (ppl {event['val_ppl']:.2f}){pairs}", flush=True)
    elif event.get("kind") == "sample":
        print(f"  sample [{event['prompt']}] {event['text'][:200]!r}", flush=True)


def _report(result: dict) -> int:
    best = result.get("best_val_loss")
    print(f"{result.get('state')}: step {result['step']}, {result['tokens']:,} tokens"
          + (f", best val_loss {best:.4f}" if best is not None else ""))
    return 0

"""`slm shrink`: a smaller student from a teacher, then distillation."""

from __future__ import annotations

from slm_core.cli.flags import add_launch_flags, add_overrides, add_runs_dir
from slm_core.cli.train import cmd_train
from slm_core.errors import SLMError
from slm_core.models.memory import locate, model_config
from slm_core.system import format_count
from slm_core.train.shrink import format_summary, shrink_summary


def add_shrink_parser(sub) -> None:
    parser = sub.add_parser("shrink", help="shrink a model: a student made of N of the teacher's layers, "
                                           "distilled from the teacher (same tokenizer)")
    parser.add_argument("teacher", help="run name, checkpoint folder, Hugging Face folder or cached Hub id")
    parser.add_argument("--layers", type=int, required=True, help="the student's layer count")
    parser.add_argument("--name", help="run name (default: shrink-cpu-<timestamp>)")
    parser.add_argument("--steps", type=int, default=None, help="distillation steps (default: the recipe's)")
    parser.add_argument("--preset", default="shrink-cpu", help="recipe for the distillation settings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runs_dir(parser)
    add_overrides(parser)
    add_launch_flags(parser)


def cmd_shrink(args) -> int:
    teacher_config, name = model_config(locate(args.teacher, args.runs_dir))
    summary = shrink_summary(teacher_config, args.layers)  # checks the layer count too
    print(format_summary(name, teacher_config.n_layer, summary, format_count), flush=True)
    if args.steps is not None and args.steps < 1:
        raise SLMError(f"--steps={args.steps} is invalid: give a positive number of steps")
    args.overrides = [f"distill.teacher={args.teacher}", f"distill.shrink_layers={args.layers}",
                      *([f"train.max_steps={args.steps}"] if args.steps else []), *args.overrides]
    args.config, args.mode = None, "distill"
    return cmd_train(args)

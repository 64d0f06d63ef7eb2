"""`slm quantize`: an int8 / int4 artifact beside the model, optionally with a side-by-side report."""

from __future__ import annotations

from pathlib import Path

from slm_core.cli.flags import add_runs_dir
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.models.model import merge_adapter
from slm_core.models.quantized import (
    GROUP_SIZES,
    METHODS,
    artifact_dir,
    quantize_model,
    save_quantized,
)
from slm_core.post.quantize import eval_windows_for, format_report, quantization_report
from slm_core.run.runs import check_runs_dir


def add_quantize_parser(sub) -> None:
    parser = sub.add_parser("quantize", help="quantize a model (int8 / int4 / int8-dynamic), optionally with a report")
    parser.add_argument("model", help="run name, checkpoint folder or Hugging Face folder")
    parser.add_argument("--method", choices=METHODS, default="int8")
    parser.add_argument("--group-size", type=int, default=64, choices=GROUP_SIZES, help="int4 group size")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/quantized/<method>)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    parser.add_argument("--report", action="store_true",
                        help="compare with the original: file size, memory, validation perplexity, tokens/s")
    parser.add_argument("--eval-tokens", type=int, default=20_000, help="validation tokens for the report")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_runs_dir(parser)


def cmd_quantize(args) -> int:
    import copy


    if args.eval_tokens < 1:
        raise SLMError(f"--eval-tokens={args.eval_tokens} is invalid: give a positive number of tokens")
    loaded = load_model(args.model, tag=args.checkpoint, runs_dir=check_runs_dir(args.runs_dir))
    group_size = args.group_size if args.method == "int4" else None
    label = args.method + (f"-g{group_size}" if group_size else "")
    out = Path(args.out) if args.out else artifact_dir(loaded.path, "quantized", label)

    original = merge_adapter(loaded.model)  # a LoRA run: quantize (and measure) the merged model
    quantized = quantize_model(copy.deepcopy(original) if args.report else original, args.method, group_size)
    save_quantized(quantized, loaded.config, loaded.tokenizer, out, source=str(args.model), overwrite=args.overwrite)
    print(f"wrote {out}")
    if args.report:
        windows = eval_windows_for(loaded, args.eval_tokens)
        rows = quantization_report(original, {label: quantized}, windows, paths={label: out})
        print(format_report(rows))
    return 0

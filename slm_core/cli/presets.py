"""`slm presets`: the model and recipe presets, with parameters and memory."""

from __future__ import annotations

from slm_core.config import list_presets, load_model_preset, preset_description
from slm_core.models.estimate import describe
from slm_core.system import format_count, format_mb


def add_presets_parser(sub) -> None:
    parser = sub.add_parser("presets", help="list model and recipe presets with parameters and memory")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size for the training-memory estimate")


def cmd_presets(args) -> int:
    print(f"{'model preset':<18}{'family':<8}{'params':>10}{'train mem':>12}{'infer mem':>12}  description")
    for name in list_presets("models"):
        config = load_model_preset(name)
        info = describe(config, batch_size=args.batch_size, precision="bf16")
        print(f"{name:<18}{config.family:<8}{format_count(info['params']['total']):>10}"
              f"{format_mb(info['training']['total_mb']):>12}{format_mb(info['inference']['total_mb']):>12}  "
              f"{preset_description('models', name)[:70]}")
    print(f"\n(training memory at batch {args.batch_size}, full context, bf16 autocast with fp32 master weights)\n")
    print(f"{'recipe':<24}description")
    for name in list_presets("recipes"):
        print(f"{name:<24}{preset_description('recipes', name)[:90]}")
    return 0

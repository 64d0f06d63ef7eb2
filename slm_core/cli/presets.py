"""`slm presets`: the model and recipe presets, with parameters and memory."""

from __future__ import annotations

from slm_core.config import list_presets, load_model_preset, preset_description
from slm_core.models.estimate import describe


def add_presets_parser(sub) -> None:
    parser = sub.add_parser("presets", help="list model and recipe presets with parameters and memory")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size for the training-memory estimate")


def cmd_presets(args) -> int:
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

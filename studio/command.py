"""From the page's fields to a RunConfig, to `--set` overrides, to the exact `slm` command the worker runs
and "copy as command" shows. Torch-free."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Optional

from slm_core.config import ModelConfig, RunConfig, load_model_preset, load_recipe
from slm_core.errors import SLMError
from studio.views import flatten

# Fields the family decides unless a preset set them (config.FAMILY_DEFAULTS); reset on a family switch.
FAMILY_FIELDS = ("norm", "mlp", "position", "bias", "qkv_bias", "tie_embeddings")
MODEL_FIELDS = ("family", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "context_length", "vocab_size",
                "dropout")


# Optional numbers show 0 for "not set" (a Gradio Number cannot hold an empty value).
ZERO_AS_NONE = {"model.vocab_size", "model.d_ff", "data.max_chars", "distill.shrink_layers"}  # 0 = None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _none_if_zero(key: str, value: Any) -> Any:
    return None if key in ZERO_AS_NONE and not _blank(value) and float(value) == 0 else value


def model_from_fields(base: ModelConfig | str | None, fields: dict[str, Any]) -> ModelConfig:
    """The Model tab's shape: `base` (a ModelConfig, or a preset name) with the edited fields applied.
    Raises SLMError naming the field (e.g. a width the head count does not divide)."""
    if isinstance(base, str):
        base = load_model_preset(base)
    raw = (base or ModelConfig()).to_dict()
    family = fields.get("family") or raw["family"]
    if family != raw["family"]:
        for key in FAMILY_FIELDS + ("d_ff",):
            raw[key] = None
    changed = False
    for key in MODEL_FIELDS:
        if key not in fields:
            continue
        value = None if _blank(fields[key]) else _none_if_zero(f"model.{key}", fields[key])
        if key not in ("vocab_size", "d_ff", "n_kv_head") and value is None:
            continue  # a cleared required field keeps the base's value
        if key not in ("family", "dropout") and value is not None:
            value = int(value)
        if key == "dropout" and value is not None:
            value = float(value)
        changed |= value != raw.get(key)
        raw[key] = value
    if changed and base is not None and not raw["name"].endswith("-custom"):
        raw["name"] = f"{raw['name']}-custom"
    # Through RunConfig.from_dict: the same type coercion and checks as a recipe's YAML.
    return RunConfig.from_dict({"model": raw}).model


def recipe_model_preset(recipe: str) -> Optional[str]:
    """The model preset a recipe builds on (`model: NAME` or `model: {preset: NAME, ...}`), if any."""
    import yaml

    from slm_core.config import PRESETS_DIR, list_presets, user_recipes_dir

    path = PRESETS_DIR / "recipes" / f"{recipe}.yaml"
    if not path.exists():
        path = user_recipes_dir() / f"{recipe}.yaml"
    if not path.exists() and str(recipe).endswith((".yaml", ".yml")):
        path = Path(recipe)  # a run's config.yaml ("load settings", "clone")
    raw = (yaml.safe_load(path.read_text()) or {}).get("model") if path.exists() else None
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        return None
    # A resolved config names its model, not a preset: "tiny-llama-custom" was edited from tiny-llama.
    name = raw.get("preset") or str(raw.get("name") or "").removesuffix("-custom")
    return name if name in list_presets("models") else None


def ui_config(recipe: str, values: dict[str, Any], model: Optional[ModelConfig] = None) -> RunConfig:
    """The recipe with the page's values ('section.key' → value) and model shape applied."""
    raw = load_recipe(recipe).to_dict()
    if model is not None:
        raw["model"] = model.to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        raw[section][name] = None if _blank(value) else _none_if_zero(key, value)
    return RunConfig.from_dict(raw)


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)  # keep "1.0" a float for float fields
    return str(value)


def overrides_between(recipe: RunConfig, config: RunConfig) -> list[str]:
    """`section.key=value` for every setting where `config` differs from `recipe`, in field order."""
    a, b = flatten(recipe.to_dict()), flatten(config.to_dict())
    out = []
    for key, value in b.items():
        if key == "preset" or a.get(key) == value:
            continue
        out.append(f"{key}={format_value(value)}")
    return out


def train_args(recipe: str, overrides: Iterable[str], name: Optional[str] = None,
               runs_dir: Optional[str] = None, launch: Iterable[str] = ()) -> list[str]:
    """Arguments after `slm` (or `python -m slm_core`) that start this run; `launch`: `launch_args`."""
    args = ["train", "--preset", recipe]
    if name:
        args += ["--name", name]
    if runs_dir:
        args += ["--runs-dir", str(runs_dir)]
    for item in overrides:
        args += ["--set", item]
    return args + list(launch)


def launch_args(nproc: Any = 1, nnodes: Any = 1, node_rank: Any = 0, rdzv_endpoint: Any = "") -> list[str]:
    """`--nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT]` for several processes (slm_core.train.distributed
    turns them into the torchrun line); [] for one process on one machine. Checked as the CLI checks them."""
    from slm_core.train.distributed import torchrun_command

    nproc, nnodes, node_rank = (int(v) if not _blank(v) else d for v, d in ((nproc, 1), (nnodes, 1), (node_rank, 0)))
    endpoint = (rdzv_endpoint or "").strip() if nnodes > 1 else ""
    if nnodes > 1 and endpoint and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", endpoint):
        raise SLMError(f"rendezvous endpoint {endpoint!r} must be HOST:PORT of machine 0 (e.g. 10.0.0.1:29500)")
    torchrun_command([], nproc, nnodes, node_rank, endpoint or None)  # the same checks as the CLI's, same words
    if nproc == 1 and nnodes == 1:
        return []
    args = ["--nproc", str(nproc)]
    if nnodes > 1:
        args += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-endpoint", endpoint]
    return args


def gpu_env(gpus: Optional[Iterable[Any]]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for the GPUs picked on the page ({} for all of them / none picked)."""
    picked = [str(int(g)) for g in (gpus or []) if not _blank(g)]
    return {"CUDA_VISIBLE_DEVICES": ",".join(picked)} if picked else {}


def resume_args(name: str, runs_dir: Optional[str] = None, overrides: Iterable[str] = ()) -> list[str]:
    args = ["resume", name] + (["--runs-dir", str(runs_dir)] if runs_dir else [])
    for item in overrides:
        args += ["--set", item]
    return args


def shell_command(args: list[str], env: Optional[dict[str, str]] = None) -> str:
    prefix = "".join(f"{key}={shlex.quote(value)} " for key, value in (env or {}).items())
    return prefix + "slm " + " ".join(shlex.quote(a) for a in args)


def runs_dir_arg(root) -> Optional[str]:
    """--runs-dir unless the runs dir is ./runs of the working directory. Not $SLM_RUNS_DIR: the Studio
    sets that in its own environment (launch), which is not the shell a command is pasted into."""
    return None if Path(root).resolve() == (Path.cwd() / "runs").resolve() else str(root)


def runs_dir_flag(root) -> list[str]:
    """["--runs-dir", DIR] where runs_dir_arg says it is needed: the "From a shell" lines of every tab."""
    arg = runs_dir_arg(root)
    return ["--runs-dir", arg] if arg else []


# ---- the page's fields → overrides ------------------------------------------------------------

# Sections that only mean something in some modes: a LoRA rank typed in, then a switch to pretraining,
# must not end up in the command.
MODE_SECTIONS = {
    "pretrain": ("model", "data", "tokenizer", "train"),
    "distill": ("model", "data", "tokenizer", "train", "distill"),
    "lora": ("model", "data", "tokenizer", "train", "lora"),
    "finetune": ("model", "data", "tokenizer", "train"),
    "dpo": ("model", "data", "tokenizer", "train", "lora", "preference"),
    "orpo": ("model", "data", "tokenizer", "train", "lora", "preference"),
    "grpo": ("model", "data", "tokenizer", "train", "lora", "grpo"),
}
BASE_MODES = ("lora", "finetune", "distill", "dpo", "orpo", "grpo")  # modes where train.init_from means something

# GRPO's rewards as the page shows them: one checkbox each, "format" split into its two kinds (a regex, a JSON
# schema), and one weight per reward; the page's keys below turn into grpo.rewards / reward_weights / format_*.
REWARD_CHECKS = (("last number = answer", "last_number"), ("exact match", "exact_match"),
                 ("format: regex", "format_regex"), ("format: JSON schema", "format_schema"),
                 ("length penalty", "length"), ("custom module:function", "custom"))
REWARD_WEIGHTS = ("last_number", "exact_match", "format", "length", "custom")
WEIGHT_KEYS = tuple(f"grpo.weight.{name}" for name in REWARD_WEIGHTS)  # page-only keys: not config fields


def _reward_of(check: str) -> str:
    return "format" if check.startswith("format_") else check


def grpo_page_values(values: dict[str, Any]) -> dict[str, Any]:
    """The page's GRPO fields (reward checkboxes, a weight per reward) as the grpo section's keys: rewards in the
    checkboxes' order, format_regex / format_schema / custom_reward only when their box is ticked, weights only
    when one differs from 1."""
    if "grpo.rewards" not in values:
        return values
    out = {k: v for k, v in values.items() if k not in WEIGHT_KEYS}
    ticked = values.get("grpo.rewards") or []
    ticked = [ticked] if isinstance(ticked, str) else list(ticked)
    rewards = list(dict.fromkeys(_reward_of(c) for _, c in REWARD_CHECKS if c in ticked))
    for key, check in (("grpo.format_regex", "format_regex"), ("grpo.format_schema", "format_schema"),
                       ("grpo.custom_reward", "custom")):
        if key in out and check not in ticked:
            out[key] = None
    out["grpo.rewards"] = rewards
    weights = [values.get(f"grpo.weight.{name}") for name in rewards]
    weights = [1.0 if _blank(w) else float(w) for w in weights]
    out["grpo.reward_weights"] = weights if any(w != 1.0 for w in weights) else None
    return out


def grpo_form_values(grpo: dict) -> dict[str, Any]:
    """grpo_page_values the other way: a config's grpo section as the page's checkboxes and weights. A reward
    given as module:function ticks "custom" with it in the custom box."""
    rewards, weights = list(grpo.get("rewards") or []), grpo.get("reward_weights") or []
    ticked, custom = [], grpo.get("custom_reward")
    for name in rewards:
        if name == "format":
            ticked += [c for c, key in (("format_regex", "format_regex"), ("format_schema", "format_schema"))
                       if grpo.get(key)]
        elif name in REWARD_WEIGHTS:
            ticked.append(name)
        else:  # module:function
            ticked.append("custom")
            custom = custom or name
    out = {"grpo.rewards": [c for _, c in REWARD_CHECKS if c in ticked], "grpo.custom_reward": custom}
    by_name = {("custom" if name not in REWARD_WEIGHTS else name): w for name, w in zip(rewards, weights)}
    out.update({f"grpo.weight.{name}": float(by_name.get(name, 1.0)) for name in REWARD_WEIGHTS})
    return out


def page_config(recipe: str, preset: Optional[str], values: dict[str, Any]) -> RunConfig:
    """The RunConfig the page describes: the recipe, the Model tab's shape, and every field's value."""
    base = load_recipe(recipe)
    mode = values.get("train.mode") or base.train.mode
    # The recipe's own model (a preset with its changes) unless another preset was picked in the Model tab.
    model_base = base.model if not preset or preset == recipe_model_preset(recipe) else preset
    model = model_from_fields(model_base, {k[len("model."):]: v for k, v in values.items() if k.startswith("model.")})
    kept = {}
    for key, value in grpo_page_values(values).items():
        section = key.split(".", 1)[0]
        if section == "model" or section not in MODE_SECTIONS.get(mode, ()):
            continue
        if key == "train.init_from" and mode not in BASE_MODES:
            continue
        kept[key] = value
    return ui_config(recipe, kept, model)


def page_overrides(recipe: str, preset: Optional[str], values: dict[str, Any]) -> list[str]:
    return overrides_between(load_recipe(recipe), page_config(recipe, preset, values))


def recipe_values(recipe: str, keys: Iterable[str]) -> tuple[Optional[str], list[Any]]:
    """(model preset name, value per field key) that prefill the page from a recipe."""
    config = load_recipe(recipe).to_dict()
    form = grpo_form_values(config["grpo"])
    out = []
    for key in keys:
        section, _, name = key.partition(".")
        value = form[key] if key in form else config.get(section, {}).get(name)
        if isinstance(value, list) and key != "grpo.rewards":  # the checkboxes take the list itself
            value = ",".join(str(v) for v in value)
        if value is None and key in BLANK_AS_EMPTY:
            value = ""
        out.append(0 if value is None and key in ZERO_AS_NONE else value)
    return recipe_model_preset(recipe), out


# Text and dropdown fields show None as "" (a Number shows None as blank by itself).
BLANK_AS_EMPTY = {"data.text_column", "data.template", "tokenizer.path", "train.init_from", "distill.teacher",
                  "grpo.custom_reward", "grpo.format_regex", "grpo.format_schema"}

"""A report card per model (perplexity, task and judge scores, size, speed), side by side for the models
picked, as JSON, as Markdown and in a Hugging Face export's model card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, atomic_write_text
from slm_core.infer.generate import stream_text
from slm_core.models.estimate import count_parameters
from slm_core.models.load import load_model
from slm_core.models.model import base_transformer
from slm_core.post.evaluate import perplexity
from slm_core.post.harness import run_tasks
from slm_core.post.judge import (
    Endpoint,
    agreement,
    judge_replies,
    load_prompts,
    model_replies,
)
from slm_core.run.lineage import node_at, record_card
from slm_core.run.lineage_hub import card_body, card_metadata, export_lineage
from slm_core.run.runs import latest_card, primary_metric, resolve_run
from slm_core.system import format_bytes

COMMON_TEXT = "builtin"  # the built-in stories: every model can be scored on the same text
CARD_README = "README.md"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".bin", ".data")
SPEED_PROMPT = "Once upon a time"


def _parameters(loaded) -> int:
    """Parameters of the model as trained: a quantized model counts its original weights, not its
    packed int4 bytes, and a LoRA model counts base plus adapter."""
    core = base_transformer(loaded.model)
    counted = count_parameters(core.config)["total"]
    adapter = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" in n)
    return int(counted + adapter)


def _size_on_disk(path: Path) -> int:
    """Bytes of the weight files where the model was loaded from (not optimizer state)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.suffix in WEIGHT_SUFFIXES or p.parent.name == "adapter")


def _decode_speed(loaded, tokens: int = 64) -> float:
    stats: dict = {}
    for _ in stream_text(loaded, SPEED_PROMPT, max_new_tokens=tokens, temperature=0.0, seed=0, stats=stats,
                         use_template=False):
        pass
    return float(stats.get("tokens_per_sec") or 0.0)


def model_card(source: str, tag: str = "best", tasks: Optional[list[str]] = None, task_limit: Optional[int] = None,
               judge: Optional[dict] = None, eval_tokens: int = 20_000,
               on_progress: Optional[Callable[[str], None]] = None, runs_dir: Optional[Path] = None) -> dict:
    """Everything measured about one model. `judge`: {"endpoint": Endpoint, "prompts": str|None,
    "limit": int, "seed": int} or None to skip judging."""
    say = on_progress or (lambda text: None)
    loaded = load_model(source, tag=tag, runs_dir=runs_dir)
    say(f"{source}: perplexity")
    own = perplexity(loaded, max_tokens=eval_tokens)
    common = perplexity(loaded, COMMON_TEXT, split="val", max_tokens=eval_tokens)
    card = {"model": str(source), "path": str(loaded.path), "kind": loaded.kind, "parameters": _parameters(loaded),
            "size_bytes": _size_on_disk(loaded.path), "ppl_own": own["ppl"], "own_data": own["data"],
            "ppl_common": common["ppl"], "common_data": COMMON_TEXT, "made": time.strftime("%Y-%m-%d %H:%M:%S")}
    say(f"{source}: decoding speed")
    card["tokens_per_sec"] = _decode_speed(loaded)
    if tasks:
        say(f"{source}: tasks {', '.join(tasks)}")
        card["tasks"] = run_tasks(loaded, tasks, limit=task_limit, on_progress=say)["tasks"]
    if judge:
        card["judge"] = _judge(loaded, judge, say)
    return card


def _judge(loaded, settings: dict, say: Callable[[str], None]) -> dict:
    seed = int(settings.get("seed", 0))
    items = load_prompts(settings.get("prompts"), int(settings.get("limit", 20)))
    say(f"replying to {len(items)} judge prompts")
    items = model_replies(loaded, items, seed=seed)
    say(f"judging {len(items)} replies at {settings['endpoint'].base_url}")
    return judge_replies(settings["endpoint"], items, settings.get("rubric"), seed=seed)


def save_card(card: dict) -> dict:
    """Write the card under the model's evals/ folder (and an HF export's README); returns the paths."""
    folder = _card_home(Path(card["path"]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (folder / "evals").mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "evals" / f"report-{stamp}.json", folder / "evals" / f"report-{stamp}.md"
    atomic_write_json(json_path, card)
    atomic_write_text(md_path, to_markdown([card]))
    record_card(json_path, folder)
    paths = {"json": str(json_path), "markdown": str(md_path)}
    if card.get("kind") == "hf":
        paths["readme"] = str(write_model_card(folder, card))
    return paths


def _card_home(path: Path) -> Path:
    """A run's card lives in the run folder, not inside one of its checkpoints."""
    return path.parent.parent if path.parent.name == "checkpoints" else path


def card_of_source(source: Optional[str], runs_dir: Optional[Path] = None) -> Optional[dict]:
    """The newest report card of a model source (a run name, a run or model folder), if it has one."""
    if not source:
        return None
    candidates = [Path(source)]
    try:
        candidates.append(resolve_run(source, runs_dir))
    except (SLMError, OSError, ValueError):
        pass
    for path in candidates:
        if path.exists():
            card = latest_card(_card_home(path if path.is_dir() else path.parent))
            if card is not None:
                return card
    return None


def write_model_card(folder: str | Path, card: Optional[dict], name: Optional[str] = None,
                     lineage: Optional[dict] = None) -> Path:
    """README.md of an HF folder: front matter the Hub reads (its model tree from `lineage`, see
    slm_core.run.lineage_hub), then the card's tables and the lineage."""
    import yaml

    folder = Path(folder)
    name = name or folder.name
    lineage = lineage if lineage is not None else card_lineage(folder)
    front = yaml.safe_dump(card_metadata(lineage), sort_keys=False, allow_unicode=True)
    scores = f"Evaluation report card:\n\n{to_markdown([card])}" if card else ""
    body = "\n".join(part for part in (scores, card_body(lineage)) if part)
    text = f"---\n{front}---\n\n# {name}\n\nTrained with SLM Studio.\n\n{body}"
    path = folder / CARD_README
    atomic_write_text(path, text)
    return path


def card_lineage(folder: Path) -> dict:
    """An HF folder's own lineage (its record names what it was exported from), for re-writing its card."""
    record = node_at(folder) or {}
    parent = next(iter(record.get("parents") or []), None)
    if not parent or not parent.get("path"):
        return {}
    return export_lineage(parent["path"], (record.get("details") or {}).get("format") or "hf", folder)


def format_value(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(cards: list[dict]) -> str:
    """One table of the headline numbers, then task and judge tables when any card has them."""
    if not cards:
        raise SLMError("no report cards to show: evaluate at least one model")
    lines = ["| model | parameters | size on disk | ppl (own data) | ppl (common text) | tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in cards:
        # format_bytes, as the Quantize tab shows the same files (it read 3.50 here and 3.34 MB there)
        lines.append(f"| {c['model']} | {c['parameters']:,} | {format_bytes(c['size_bytes'])} | {format_value(c['ppl_own'])} "
                     f"| {format_value(c['ppl_common'])} | {format_value(c.get('tokens_per_sec'), '.0f')} |")
    lines += _task_table(cards) + _judge_table(cards)
    return "\n".join(lines) + "\n"


def _task_table(cards: list[dict]) -> list[str]:
    names = sorted({t for c in cards for t in (c.get("tasks") or {})})
    if not names:
        return []
    lines = ["", "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for c in cards:
        cells = []
        for name in names:
            row = (c.get("tasks") or {}).get(name)
            metric, value = primary_metric(row) if row else ("", None)
            cells.append(f"{value:.3f} ({metric})" if row else "-")
        lines.append(f"| {c['model']} | " + " | ".join(cells) + " |")
    return lines


def _judge_table(cards: list[dict]) -> list[str]:
    judged = [c for c in cards if c.get("judge")]
    if not judged:
        return []
    criteria = list(judged[0]["judge"]["means"])
    lines = ["", "| model | " + " | ".join(criteria) + " | unscored | judge |", "|---|" + "---:|" * len(criteria) + "---:|---|"]
    for c in judged:
        j = c["judge"]
        means = " | ".join(format_value(j["means"].get(k), ".2f") for k in criteria)
        lines.append(f"| {c['model']} | {means} | {j['unscored']} | {j['endpoint'].get('model')} @ {j['endpoint'].get('base_url')} |")
    return lines


# ---- `slm eval --tasks/--judge/--card/--pairwise` --------------------------------------------------

def judge_settings(args) -> Optional[dict]:
    """The --judge* flags as model_card's `judge` argument (None without --judge)."""
    import os


    if not args.judge:
        return None
    seeds = _seeds(args.judge_seeds)
    endpoint = Endpoint(args.judge, args.judge_model, args.judge_key or os.environ.get("OPENAI_API_KEY"),
                        timeout_s=args.judge_timeout, temperature=args.judge_temperature)
    if not 0 <= endpoint.temperature <= 2:
        raise SLMError(f"--judge-temperature {endpoint.temperature} is out of range: use 0 (greedy) to 2")
    return {"endpoint": endpoint, "prompts": args.judge_prompts, "limit": args.judge_limit, "seed": seeds[0],
            "seeds": seeds}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not 1 <= len(seeds) <= 2:
        raise SLMError(f"--judge-seeds {text!r}: give one seed or two separated by a comma (e.g. 0,1)")
    return seeds


def second_judging(source: str, tag: str, judge: dict, first: dict) -> dict:
    """The same replies judged again with the second seed: how much the judge agrees with itself."""
    items = [{"prompt": j["prompt"], "reply": j["reply"]} for j in first["judgements"]]
    second = judge_replies(judge["endpoint"], items, first["rubric"], seed=judge["seeds"][1])
    return agreement(first, second)

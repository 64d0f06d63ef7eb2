"""Tasks for lm-evaluation-harness: the small ones shipped here (story_ending, opposites, arithmetic),
generated offline, and tasks made from a user's JSONL."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

from slm_core import allowlist
from slm_core.allowlist import readable
from slm_core.data.arithmetic import LAST_NUMBER_PATTERN, QUESTION_FORMAT, TASK_SEED, arithmetic_items
from slm_core.data.corpus import OPPOSITES, _story
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_text

TASK_VERSION = 1  # bump when a shipped task's items change
SHIPPED_ITEMS = 200

MC_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
              {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
EXACT_MATCH = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                "ignore_case": True, "ignore_punctuation": True}]


def _story_ending_items(n: int, seed: int = 104_729) -> list[dict]:
    rng = random.Random(seed)
    stories = [_story(rng, short=True)[0].split("\n\n") for _ in range(n * 2)]
    stories = [s for s in stories if len(s) >= 3][:n]
    items = []
    for i, blocks in enumerate(stories):
        others = rng.sample([s[-1] for j, s in enumerate(stories) if j != i and s[-1] != blocks[-1]], 3)
        choices = others + [blocks[-1]]
        rng.shuffle(choices)
        items.append({"context": "\n\n".join(blocks[:-1]) + "\n\n", "choices": choices,
                      "answer": choices.index(blocks[-1])})
    return items


def _opposites_items(n: int, seed: int = 130_363) -> list[dict]:
    rng = random.Random(seed)
    words = sorted({w for pair in OPPOSITES for w in pair})
    items = []
    for _ in range(n):
        word, other = rng.choice(OPPOSITES)[:: rng.choice((1, -1))]
        choices = rng.sample([w for w in words if w not in (word, other)], 3) + [other]
        rng.shuffle(choices)
        items.append({"context": f'The opposite of "{word}" is',
                      "choices": [f' "{c}".' for c in choices], "answer": choices.index(other)})
    return items


def _mc_config(name: str, path: Path) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}", "metric_list": MC_METRICS,
            "metadata": {"version": TASK_VERSION}}


def _generation_config(name: str, path: Path, last_number: bool = False) -> dict:
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
              "test_split": "test", "output_type": "generate_until",
              "doc_to_text": QUESTION_FORMAT.format(prompt="{{prompt}}"), "doc_to_target": "{{reference}}",
              "generation_kwargs": {"until": ["\n", "Question:"], "max_gen_toks": 24, "do_sample": False},
              "metric_list": EXACT_MATCH, "metadata": {"version": TASK_VERSION}}
    if last_number:  # "3 plus 4 is 7." → "7"
        config["filter_list"] = [{"name": "last_number", "filter": [
            {"function": "regex", "regex_pattern": LAST_NUMBER_PATTERN, "group_select": -1, "fallback": "[none]"},
            {"function": "take_first"}]}]
    return config


SHIPPED_TASKS: dict[str, tuple[Callable[[int], list[dict]], Callable[[str, Path], dict]]] = {
    "story_ending": (_story_ending_items, _mc_config),
    "opposites": (_opposites_items, _mc_config),
    "arithmetic": (lambda n: arithmetic_items(n, TASK_SEED),
                   lambda name, path: _generation_config(name, path, last_number=True)),
}


def tasks_dir() -> Path:
    root = os.environ.get("SLM_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "slm-studio"
    return (base / "tasks").expanduser()


def shipped_task_file(name: str) -> Path:
    """The task's JSONL, generated on first use (atomically: a kill never leaves half a file)."""
    make_items, _ = SHIPPED_TASKS[name]
    path = tasks_dir() / f"{name}-v{TASK_VERSION}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(item) + "\n" for item in make_items(SHIPPED_ITEMS)))
    return path


def user_task_config(path: Path) -> dict:
    """A harness task config for a JSONL file of the user's own, by the fields of its first record."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), None)
    except (OSError, UnicodeDecodeError) as error:
        raise SLMError(f"cannot read task file {path}: {error}") from error
    if first is None:
        raise SLMError(f"task file {path} is empty: add one JSON object per line")
    try:
        record = json.loads(first)
    except json.JSONDecodeError as error:
        raise SLMError(f"task file {path}: the first record is not JSON ({error.msg})") from error
    name = "user_" + "".join(c if c.isalnum() else "_" for c in path.stem)
    if isinstance(record, dict) and {"question", "choices", "answer"} <= record.keys():
        config = _mc_config(name, path)
        config["doc_to_text"] = "{{question}}"
        # the answer may be the index or the text of the right choice
        config["doc_to_target"] = "{{answer if answer is number else choices.index(answer)}}"
        return config
    if isinstance(record, dict) and {"prompt", "reference"} <= record.keys():
        return _generation_config(name, path)
    # Never quote the file's content: a name typed in the page may point anywhere.
    raise SLMError(f"task file {path}: each record needs question/choices/answer (multiple choice) or "
                   "prompt/reference (generation); the first record has neither")


def task_configs(names: list[str]) -> tuple[list[dict], list[str]]:
    """(inline configs for shipped and file tasks, names left for the harness's own index)."""
    if not names:
        raise SLMError(f"name at least one task: {', '.join(SHIPPED_TASKS)}, a JSONL file, or a harness task")
    configs, harness = [], []
    for name in names:
        if name in SHIPPED_TASKS:
            configs.append(SHIPPED_TASKS[name][1](f"slm_{name}", shipped_task_file(name)))
        elif name.endswith((".jsonl", ".json")) or os.sep in name or \
                (not allowlist.refuses(name) and Path(name).is_file()):  # confined: a bare name is a harness task
            path = readable(Path(name).expanduser())
            if not path.is_file():
                raise SLMError(f"task file {name} not found: give the path of a JSONL file")
            configs.append(user_task_config(path))
        else:
            harness.append(name)
    return configs, harness

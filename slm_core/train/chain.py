"""A start made by a recipe: `train.init_from: recipe:NAME` trains recipe NAME first, as the run
`<run>-start` beside this one (resumed if it was interrupted, reused once finished), and starts from it.
So a recipe that needs a particular start (GRPO needs a model whose rewards are not all zero) runs as one
command, and the start stays a run of its own (its curves, its score, its checkpoints)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from slm_core.config import RunConfig, load_recipe
from slm_core.errors import SLMError
from slm_core.run import runs

PREFIX = "recipe:"


def start_run_dir(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}-start"


def resolve_start(config: RunConfig, run_dir: Path, train: Callable, **train_kwargs) -> RunConfig:
    """`config` with a `recipe:NAME` start trained (by `train(config, run_dir, ...)`, the training loop's entry)
    and replaced by its run folder; any other config unchanged."""
    source = config.train.init_from
    if not (isinstance(source, str) and source.startswith(PREFIX)):
        return config
    name = source[len(PREFIX):].strip()
    if not name or name == config.preset:
        raise SLMError(f"train.init_from={source!r}: name another recipe to make the start with, "
                       "e.g. recipe:arithmetic-start-cpu")
    start = load_recipe(name, [f"train.device={config.train.device}"])
    folder = start_run_dir(Path(run_dir))
    state = runs.read_status(folder).get("state") if (folder / "status.json").exists() else None
    if state != "finished":
        print(f"start: training recipe {name} into {folder} first", flush=True)
        result = train(start, folder, resume=(folder / "checkpoints").is_dir(), **train_kwargs)
        if result.get("state") != "finished":  # stopped by a signal or a stop request: so is this run
            raise SLMError(f"the start run {folder.name} ended {result.get('state')} before its last step; "
                           "start this run again to resume it")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=str(folder)))

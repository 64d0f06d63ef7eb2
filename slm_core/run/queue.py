"""The run queue (<runs dir>/queue.json): runs waiting for the one training slot, changed only under an OS
lock so the Studio and `slm queue` in a shell never start two runs. Torch-free."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from slm_core.config import load_recipe
from slm_core.errors import SLMError
from slm_core.fsio import read_state
from slm_core.run import runs

QUEUE_FILE = "queue.json"
# "queued": taken from the queue and handed to a worker that has not started training yet (see take_next).
LIVE_STATES = ("running", "paused", "queued")
LAUNCH_GRACE_S = 180.0  # a launched run that wrote no status within this long no longer holds the slot


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[dict]:
    """The queue file's contents, under an exclusive lock; changes to the dict are written back."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".queue.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_state(root / QUEUE_FILE) or {"entries": [], "launching": None}
            before = repr(state)
            yield state
            if repr(state) != before:
                runs.atomic_write_json(root / QUEUE_FILE, state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entries(root: Optional[str | Path] = None) -> list[dict]:
    """The waiting runs, next first: [{"name", "recipe", "overrides", "queued_at"}]."""
    with _locked(runs.runs_dir(root)) as state:
        return list(state.get("entries") or [])


def signature(root: Optional[str | Path] = None) -> Optional[tuple]:
    """Changes whenever the queue does (cheap: one stat)."""
    try:
        stat = (runs.runs_dir(root) / QUEUE_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def add(root: Optional[str | Path], recipe: str, overrides: list[str] = (), name: Optional[str] = None) -> dict:
    """Queue a run (its settings are checked now, not when its turn comes). Returns the entry."""
    root = runs.runs_dir(root)
    overrides = list(overrides)
    config = load_recipe(recipe, overrides)
    config.check_ready()
    with _locked(root) as state:
        taken = {e["name"] for e in state["entries"]}
        if name and name.strip():
            name = runs.valid_run_name(name.strip())
            if (root / name).exists() or name in taken:
                raise SLMError(f"a run named '{name}' already exists or is queued: pick another name")
        else:
            name = runs.new_run_name(config.preset or "run", root)
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}-q{n}"
        entry = {"name": name, "recipe": recipe, "overrides": overrides, "queued_at": time.time()}
        state["entries"].append(entry)
    return entry


def remove(root: Optional[str | Path], name: str) -> dict:
    """Cancel a queued run (nothing was started for it)."""
    with _locked(runs.runs_dir(root)) as state:
        for i, entry in enumerate(state["entries"]):
            if entry["name"] == name:
                return state["entries"].pop(i)
    raise SLMError(f"'{name}' is not in the queue (`slm queue` lists it)")


def move(root: Optional[str | Path], name: str, position: int) -> int:
    """Put a queued run at `position` (0 = next); returns the position it got."""
    with _locked(runs.runs_dir(root)) as state:
        names = [e["name"] for e in state["entries"]]
        if name not in names:
            raise SLMError(f"'{name}' is not in the queue (`slm queue` lists it)")
        entry = state["entries"].pop(names.index(name))
        position = max(0, min(int(position), len(state["entries"])))
        state["entries"].insert(position, entry)
        return position


def slot_holder(root: Path, launching: Optional[dict] = None) -> Optional[str]:
    """The run holding the training slot: one running, paused or queued (handed to a worker that has not taken
    it yet), or one just launched by an older version whose worker has not written its status yet."""
    for summary in runs.list_runs(root):
        if summary.get("state") in LIVE_STATES:
            return summary["name"]
    if launching and time.time() - launching.get("at", 0) < LAUNCH_GRACE_S:
        if not (root / launching["name"] / "status.json").exists():
            return launching["name"]
    return None


def take_next(root: Optional[str | Path], busy: Optional[Callable[[], Optional[str]]] = None) -> Optional[dict]:
    """Pop the next entry if the training slot is free (and mark it launching); None otherwise.
    `busy`: an extra check of the caller's (e.g. a worker it launched that has not written status)."""
    root = runs.runs_dir(root)
    if not (root / QUEUE_FILE).exists():
        return None
    with _locked(root) as state:
        if not state["entries"] or slot_holder(root, state.get("launching")) or (busy and busy()):
            return None
        entry = state["entries"].pop(0)
        state["launching"] = {"name": entry["name"], "at": time.time()}
        # The run exists from now on, in its own status: if this process dies (and its worker with it) before
        # the run ends, readers name this runner as the cause and offer a resume instead of a run "running" on.
        runs.write_status(root / entry["name"], state="queued", pid=os.getpid(), queue_runner=os.getpid(),
                          queued_at=entry.get("queued_at"), error=None)
        return entry


def train_argv(entry: dict, root: Path) -> list[str]:
    """`slm` arguments that start a queued run (the Studio's Start builds the same ones)."""
    args = ["train", "--preset", entry["recipe"], "--name", entry["name"], "--runs-dir", str(root)]
    for item in entry.get("overrides") or []:
        args += ["--set", item]
    return args


# ---- the command ------------------------------------------------------------------------------


def print_queue(root: Path) -> None:
    waiting = entries(root)
    holder = slot_holder(root)
    print(f"training now: {holder or '(nothing)'}")
    if not waiting:
        print("the queue is empty: `slm queue add --preset NAME` adds a run")
    for i, entry in enumerate(waiting):
        sets = " ".join(f"--set {o}" for o in entry.get("overrides") or [])
        print(f"{i:>3}  {entry['name']:<36} {entry['recipe']} {sets}".rstrip())


def run_queue(root: Path, poll_s: float = 2.0) -> int:
    """Start queued runs one after another (each as `slm train` in its own process) until the queue is
    empty; waits while another process holds the slot."""
    while entries(root):
        entry = take_next(root)
        if entry is None:
            time.sleep(poll_s)
            continue
        run_dir = root / entry["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"starting {entry['name']} ({len(entries(root))} left in the queue); its log: {run_dir / 'log.txt'}",
              flush=True)
        with open(run_dir / "log.txt", "ab") as log:  # where the Studio's log panel reads it
            code = subprocess.call([sys.executable, "-m", "slm_core", *train_argv(entry, root)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        print(f"{entry['name']} ended with exit code {code}", flush=True)
        if runs.read_status(run_dir).get("state") == "queued":  # its worker ended before it took the run
            runs.write_status(run_dir, state="failed", pid=None, error=f"`slm train` exited with code {code} before "
                              f"training started; its log: {run_dir / 'log.txt'}")
    print("the queue is empty")
    return 0

"""The run directory, the only interface between a training worker and everything watching it: names,
status, metrics, samples, control requests and the runs list (layout: docs/engine-notes.md). No torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, atomic_write_text, read_state
from slm_core.run import lock as run_lock
from slm_core.system import pid_alive

TERMINAL_STATES = ("finished", "stopped", "failed")
CONTROL_REQUESTS = ("stop", "pause", "save")
STATUS_FILE = "status.json"
# Part of every "ended without a word" reason: the Studio's runner replaces such a reason with the exit code it saw.
UNREPORTED = "without reporting"


def runs_dir(path: Optional[str | Path] = None) -> Path:
    """--runs-dir, else $SLM_RUNS_DIR, else ./runs."""
    return Path(path or os.environ.get("SLM_RUNS_DIR") or "runs").expanduser().resolve()


def read_json(path: str | Path, default: Any = None) -> Any:
    """A JSON file's contents; `default` when it is missing or does not parse (not JSON, not UTF-8). For files
    whose damage the caller judges itself (a manifest that then vouches for nothing); a state file that must
    not be dropped goes through read_status / fsio.read_state, which name it and keep it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return default


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete line; a line being appended right now (no newline yet) is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def valid_run_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        raise SLMError(f"run name {name!r} is invalid: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


def new_run_name(prefix: str, root: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{prefix}-{stamp}"
    suffix = 1
    while (root / name).exists():
        suffix += 1
        name = f"{prefix}-{stamp}-{suffix}"
    return name


def resolve_run(name_or_path: str | Path, root: Optional[str | Path] = None) -> Path:
    """A run name (looked up in the runs dir) or a path to a run directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    candidate = runs_dir(root) / str(name_or_path)
    if candidate.is_dir():
        return candidate
    raise SLMError(f"no run named '{name_or_path}' in {runs_dir(root)}; `slm runs` lists them")


def read_status(run_dir: str | Path) -> dict:
    """The run's status as a reader should show it. Never raises for a damaged status.json: the run reads as
    failed with a "damaged status" reason naming the file (the next write_status keeps it aside)."""
    run_dir = Path(run_dir)
    status = _parse_status(run_dir / STATUS_FILE)
    state = status.get("state")
    # The writer's lock outranks the file: a run another process holds is running (e.g. a shell
    # `slm resume` still loading data, whose status.json still says how the last attempt ended).
    who = run_lock.holder(run_dir)
    if who is not None and not run_lock.is_self(who):
        if state not in ("running", "paused"):
            status.update(state="running", error=None)
        status["pid"], status["host"] = who.get("pid", status.get("pid")), who.get("host")
        return status
    reason = _ended_unreported(run_dir, status, who)
    if reason:
        _record_failure(run_dir, status, reason)
        status.update(state="failed", error=status.get("error") or reason)
    return status


def _parse_status(path: Path) -> dict:
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        status = None
    if isinstance(status, dict):
        return status
    return {"state": "failed", "damaged": str(path),
            "error": f"damaged status: {path} does not parse; its checkpoints and metrics are untouched: "
                     f"`slm resume {path.parent.name}` continues from the last checkpoint (the damaged file is kept aside)"}


def _ended_unreported(run_dir: Path, status: dict, who: Optional[dict]) -> Optional[str]:
    """Why a run whose status says it is live has in fact ended, or None. A worker that died without writing
    its last word (killed -9, machine reset, its queue runner killed with it) is not "running": its lock is
    free (the kernel drops it with the process) or, for runs without one, its pid is gone."""
    state, pid = status.get("state"), status.get("pid")
    unlocked = who is None and (run_dir / run_lock.LOCK_FILE).exists()
    if not ((unlocked and state in ("running", "paused")) or
            (state in ("running", "paused", "queued") and pid and not pid_alive(pid))):
        return None
    runner = status.get("queue_runner")
    if runner and not pid_alive(runner):
        why = f"the queue runner (pid {runner}) stopped, and this run's worker ended with it {UNREPORTED}"
    else:
        why = f"the worker process ended {UNREPORTED} (killed or crashed)"
    saved = any((run_dir / "checkpoints" / tag / "state.json").exists() for tag in ("latest", "latest.prev"))
    return f"{why}; " + (f"`slm resume {run_dir.name}` continues from its last checkpoint" if saved else
                         "it saved no checkpoint: start it again")


def _record_failure(run_dir: Path, seen: dict, reason: str) -> None:
    """Write a dead writer's end into its own status.json, so the file stops saying "running" to every other
    reader. Only while holding the run's lock (no writer can start meanwhile) and only if the file still says
    what was judged; a read-only runs folder just keeps reporting it."""
    lock = run_lock.RunLock(run_dir)
    try:
        lock.acquire(wait_s=0)
    except SLMError:  # a writer started meanwhile: its word counts
        return
    try:
        current = _parse_status(run_dir / STATUS_FILE)
        if lock.held and not current.get("damaged") and \
                (current.get("state"), current.get("pid")) == (seen.get("state"), seen.get("pid")):
            atomic_write_json(run_dir / STATUS_FILE, dict(current, state="failed", error=current.get("error") or reason))
    except OSError:
        pass
    finally:
        lock.release()


def write_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge `fields` into status.json. A damaged one is moved aside (kept, never overwritten) and named on
    stderr, and a fresh one started: a training run does not stop for its status file."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = read_state(path)
    except SLMError as damaged:
        print(f"warning: {damaged}", file=sys.stderr)
        status = None
    status = status if isinstance(status, dict) else {}
    status.update(fields)
    status["updated_at"] = time.time()
    atomic_write_json(path, status)
    return status


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def read_samples(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "samples.jsonl")


def drop_rows_after(path: str | Path, step: int) -> int:
    """Rewrite a JSON Lines log without the rows of steps after `step` (atomically), so the steps a
    resume redoes appear once. A half-written last line goes too. Returns how many rows were dropped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    kept = []
    for line in lines:
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            row = None
        if row is None or (isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and row["step"] > step):
            continue
        kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


def append_jsonl(path: str | Path, row: dict) -> None:
    """One line per event, flushed at once so a watcher sees it and a kill loses at most this line."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=float) + "\n")
        handle.flush()


def request(run_dir: str | Path, what: str) -> None:
    """Ask a running worker to stop, pause, resume (un-pause) or save a checkpoint now."""
    control = Path(run_dir) / "control"
    control.mkdir(parents=True, exist_ok=True)
    if what == "resume":
        (control / "pause").unlink(missing_ok=True)
        return
    if what not in CONTROL_REQUESTS:
        raise SLMError(f"unknown request {what!r}: use stop, pause, resume or save")
    (control / what).touch()


def take_request(run_dir: str | Path, what: str, consume: bool = True) -> bool:
    path = Path(run_dir) / "control" / what
    if not path.exists():
        return False
    if consume:
        path.unlink(missing_ok=True)
    return True


def run_summary(run_dir: Path) -> dict:
    status = read_status(run_dir)
    config = _read_yaml(run_dir / "config.yaml")
    model, train = config.get("model") or {}, config.get("train") or {}
    started, updated = status.get("started_at"), status.get("updated_at")
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "state": status.get("state", "unknown"),
        "kind": status.get("kind", "train"),
        "mode": status.get("mode", train.get("mode")),
        "preset": status.get("preset") or config.get("preset"),
        "model": model.get("name"),
        "step": status.get("step", 0),
        "max_steps": status.get("max_steps", train.get("max_steps")),
        "tokens": status.get("tokens", 0),
        "best_val_loss": status.get("best_val_loss"),
        "best_step": status.get("best_step"),
        "duration_s": (updated - started) if started and updated else None,
        "parent": status.get("parent"),
        "error": status.get("error"),
        "started_at": started,
        "scores": _scores(run_dir),
    }


def _scores(run_dir: Path) -> str:
    """The newest report card's task and judge scores in one line ('' when there is none)."""
    return card_summary(latest_card(run_dir))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def list_runs(root: Optional[str | Path] = None) -> list[dict]:
    """Every run directory (one holding status.json), newest first."""
    base = runs_dir(root)
    if not base.is_dir():
        return []
    rows = [run_summary(p) for p in base.iterdir() if (p / STATUS_FILE).exists()]
    return sorted(rows, key=lambda r: r.get("started_at") or 0, reverse=True)


def delete_run(run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    if not (run_dir / "status.json").exists():
        raise SLMError(f"{run_dir} is not a run directory; refusing to delete it")
    if read_status(run_dir).get("state") in ("running", "paused", "queued"):
        raise SLMError(f"run '{run_dir.name}' is still running: stop it first")
    shutil.rmtree(run_dir)


# ---- the runs folder -----------------------------------------------------------------------------

def check_runs_dir(path: Optional[str | Path] = None, create: bool = False) -> Path:
    """The runs directory (--runs-dir, $SLM_RUNS_DIR or ./runs): refused if it is a file, and with
    create=True made if missing and proved writable, before a run directory is created in it."""
    root = runs_dir(path)
    if root.exists() and not root.is_dir():
        raise SLMError(f"the runs directory {root} is a file, not a folder: point --runs-dir (or $SLM_RUNS_DIR) "
                       "at a folder")
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise SLMError(f"cannot write to the runs directory {root} ({error.strerror or error}): choose another "
                           "--runs-dir or fix its permissions") from None
    return root


# ---- report cards, read here (written by slm_core.post.report_card) ------------------------------

def latest_card(folder: str | Path) -> Optional[dict]:
    reports = sorted((Path(folder) / "evals").glob("report-*.json"))
    if not reports:
        return None
    try:
        return json.loads(reports[-1].read_text())
    except (OSError, ValueError):
        return None


def primary_metric(row: dict) -> tuple[str, float]:
    """The one number a table shows for a task: accuracy where there is one, else exact match."""
    for key in ("acc_norm", "acc", "exact_match", "f1", "bleu"):
        if key in row:
            return key, row[key]
    numeric = [(k, v) for k, v in row.items() if k != "samples" and not k.endswith("_stderr")]
    return numeric[0] if numeric else ("-", float("nan"))


def card_summary(card: Optional[dict]) -> str:
    """One line for a runs table: each task's headline score and the judge's mean scores."""
    if not card:
        return ""
    parts = [f"{name.removeprefix('slm_')} {primary_metric(row)[1]:.2f}" for name, row in (card.get("tasks") or {}).items()]
    means = [v for v in ((card.get("judge") or {}).get("means") or {}).values() if v is not None]
    if means:
        parts.append(f"judge {sum(means) / len(means):.1f}/10")
    return " · ".join(parts)

"""Starts, pauses, stops and resumes the training worker (`python -m slm_core train|resume ...`) in its own
process, one run at a time, and reports a worker that died as a failed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from slm_core.allowlist import AllowList
from slm_core.config import load_recipe, load_run_config
from slm_core.errors import SLMError
from slm_core.run import queue as runqueue
from slm_core.run import runs
from studio.command import resume_args, shell_command, train_args
from studio.views import error_from_log

REPO_ROOT = Path(__file__).resolve().parent.parent
LIVE_STATES = ("running", "paused", "queued")


class Runner:
    """The one background training worker of a Studio (thread-safe: every browser tab shares it)."""

    def __init__(self, root: Optional[str | Path] = None, allow_list: Optional[AllowList] = None):
        self.root = runs.runs_dir(root)
        self.allow_list = allow_list  # a run started from the page reads only the page's folders
        self._proc: Optional[subprocess.Popen] = None
        self._name: Optional[str] = None
        self._stop_requested = False
        self._lock = threading.RLock()
        self._queue_thread: Optional[threading.Thread] = None
        self._queue_stop = threading.Event()

    # ---- starting ------------------------------------------------------------------------

    def start(self, recipe: str, overrides: Iterable[str] = (), name: Optional[str] = None,
              launch: Iterable[str] = (), env: Optional[dict] = None) -> str:
        """Launch `slm train --preset recipe --set ...` in the background; returns the run name. `launch`:
        --nproc and the multi-node flags (studio.command.launch_args); `env`: e.g. CUDA_VISIBLE_DEVICES."""
        overrides = list(overrides)
        config = load_recipe(recipe, overrides)  # a bad value fails here, on the page, not in a worker
        config.check_ready()  # e.g. LoRA without a base model
        with self._lock:
            self._refuse_if_busy()
            self.root.mkdir(parents=True, exist_ok=True)
            name = runs.valid_run_name(name.strip()) if name and name.strip() else \
                runs.new_run_name(config.preset or "run", self.root)
            if (self.root / name).exists():
                raise SLMError(f"a run named '{name}' already exists: pick another name, or Resume it")
            self._launch(name, train_args(recipe, overrides, name, str(self.root), launch), env)
        return name

    def resume(self, name: str, overrides: Iterable[str] = ()) -> str:
        """Continue a stopped or failed run from its last checkpoint (`slm resume NAME [--set ...]`;
        e.g. train.max_steps=... to train longer)."""
        with self._lock:
            self._refuse_if_busy()
            run_dir = runs.resolve_run(name, self.root)
            # latest.prev: the fallback a resume takes when latest was damaged (slm_core.run.checkpoint)
            if not any((run_dir / "checkpoints" / tag / "state.json").exists() for tag in ("latest", "latest.prev")):
                raise SLMError(f"run '{name}' has no checkpoint to resume from: start it again instead")
            overrides = list(overrides)
            load_run_config(run_dir / "config.yaml").with_overrides(overrides)  # fail here, not in the worker
            for what in runs.CONTROL_REQUESTS:  # a stale stop file would end the resumed run at once
                (run_dir / "control" / what).unlink(missing_ok=True)
            self._launch(run_dir.name, resume_args(run_dir.name, str(self.root), overrides))
        return run_dir.name

    def _refuse_if_busy(self) -> None:
        busy = self.active()
        if busy:
            raise SLMError(f"run '{busy}' is still running: queue this one (it starts when the slot frees), or stop "
                           f"'{busy}' first; one run at a time keeps its speed and memory predictable")

    # ---- the queue -----------------------------------------------------------------------

    def enqueue(self, recipe: str, overrides: Iterable[str] = (), name: Optional[str] = None) -> dict:
        """Put a run at the end of the queue (checked now); the queue worker starts it when the slot frees."""
        return runqueue.add(self.root, recipe, list(overrides), name)

    def take_next(self) -> Optional[str]:
        """Start the next queued run if nothing is running; returns its name."""
        with self._lock:
            self.poll()
            entry = runqueue.take_next(self.root, busy=self.live_name)
            if entry is None:
                return None
            self._launch(entry["name"], train_args(entry["recipe"], entry.get("overrides") or [], entry["name"],
                                                   str(self.root)))
            return entry["name"]

    def start_queue_worker(self, interval_s: float = 2.0) -> None:
        """A daemon thread that starts queued runs (added from the page or `slm queue add`) one after another,
        whether or not a page is open."""
        if self._queue_thread is not None:
            return

        def loop() -> None:
            while not self._queue_stop.wait(interval_s):
                try:
                    self.take_next()
                except Exception as error:  # noqa: BLE001 - a bad entry must not stop the worker
                    print(f"queue: {error}", file=sys.stderr)

        self._queue_stop.clear()
        self._queue_thread = threading.Thread(target=loop, name="slm-queue", daemon=True)
        self._queue_thread.start()

    def stop_queue_worker(self) -> None:
        if self._queue_thread is not None:
            self._queue_stop.set()
            self._queue_thread.join(10)
            self._queue_thread = None

    def _launch(self, name: str, args: list[str], extra_env: Optional[dict] = None) -> None:
        run_dir = self.root / name
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="2", **(extra_env or {}))
        if self.allow_list is not None:
            env.update(self.allow_list.environ())
        # The worker imports slm_core from this checkout even when the Studio was started from elsewhere.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(run_dir / "log.txt", "ab") as log:
            log.write(f"$ {shell_command(args, extra_env)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen([sys.executable, "-m", "slm_core", *args], cwd=os.getcwd(), env=env,
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)  # Ctrl-C in the server's terminal spares it
        self._name, self._stop_requested = name, False

    # ---- watching ------------------------------------------------------------------------

    def active(self) -> Optional[str]:
        """The run that is running or paused now, whoever started it; None if the worker slot is free."""
        with self._lock:
            self.poll()
            if self._proc is not None and self._proc.poll() is None:
                return self._name
        for summary in runs.list_runs(self.root):
            if summary.get("state") in LIVE_STATES:
                return summary["name"]
        return None

    def live_name(self) -> Optional[str]:
        """The run whose worker this Studio launched and which is still alive (no directory scan)."""
        proc = self._proc
        return self._name if proc is not None and proc.poll() is None else None

    @property
    def current(self) -> Optional[str]:
        """The run this Studio launched last (running or not)."""
        return self._name

    def poll(self) -> Optional[int]:
        """Reap the worker if it ended; a worker that died without saying so becomes a failed run."""
        with self._lock:
            if self._proc is None or self._proc.poll() is None:
                return None
            code, name = self._proc.returncode, self._name
            self._proc = None
        self._record_exit(name, code)
        return code

    def _record_exit(self, name: str, code: int) -> None:
        run_dir = self.root / name
        status = runs.read_status(run_dir)
        if code == 0 and status.get("state") in runs.TERMINAL_STATES:
            return
        if status.get("state") == "failed" and status.get("error") and "without reporting" not in status["error"]:
            return  # the worker wrote its own, better message
        if self._stop_requested and code in (-signal.SIGTERM, -signal.SIGINT):
            runs.write_status(run_dir, state="stopped", pid=None, error=None)
            return
        message = error_from_log(_read_text(run_dir / "log.txt")) or f"the worker exited with code {code}"
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            message = f"the worker was killed by {sig}" + (
                " (signal 9: usually the system ran out of memory)" if code == -signal.SIGKILL else "")
        runs.write_status(run_dir, state="failed", pid=None, error=message,
                          step=status.get("step", 0), started_at=status.get("started_at", time.time()))

    def wait(self, timeout: float = 60.0) -> Optional[int]:
        """Block until the worker exits (tests, benchmarks); returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.poll() if self._proc is proc else proc.returncode

    # ---- requests ------------------------------------------------------------------------

    def request(self, name: str, what: str) -> None:
        """pause | resume (continue) | save | stop, through the run's control/ files."""
        run_dir = runs.resolve_run(name, self.root)
        state = runs.read_status(run_dir).get("state")
        if state not in LIVE_STATES and not self._owns_live(name):
            raise SLMError(f"run '{name}' is {state or 'not started'}, not running: nothing to {what}")
        runs.request(run_dir, what)
        if what == "stop":
            self._stop_requested = True

    def terminate(self, name: str) -> None:
        """A second Stop: SIGTERM, which the trainer also turns into checkpoint-and-exit."""
        with self._lock:
            if self._proc is not None and self._name == name and self._proc.poll() is None:
                self._stop_requested = True
                os.killpg(self._proc.pid, signal.SIGTERM)

    def _owns_live(self, name: str) -> bool:
        return self._proc is not None and self._name == name and self._proc.poll() is None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""

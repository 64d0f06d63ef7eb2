"""Desktop notifications for runs: `RunWatcher` compares each run's status with what it saw last and says
what to announce (started from the queue, finished, failed with its reason); `Notifier` shows it through
desktop-notifier, or any sink with `send(title, body, run)` (tests record)."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from slm_core.run import runs
from studio.watch import runs_signature


def announcement(name: str, before: Optional[str], status: dict) -> Optional[tuple[str, str]]:
    """(title, body) for a run whose state went from `before` (None: new since the last look) to
    `status['state']`, or None."""
    state = status.get("state")
    if state == before:
        return None
    if state == "running" and before == "queued":
        return f"Run {name} started", "It left the queue and is training."
    if state == "finished":
        return f"Run {name} finished", f"Step {status.get('step', '?')}."
    if state == "failed":
        reason = str(status.get("error") or "no reason given").splitlines()[0]
        return f"Run {name} failed", reason[:200]
    return None


class RunWatcher:
    """Polls the runs folder (a stat per run when nothing changed) and calls `send(title, body, run)`."""

    def __init__(self, root: str | Path, send: Callable[[str, str, str], Any]):
        self.root, self.send = Path(root), send
        self.states: dict[str, Optional[str]] = {}
        self._signature: tuple = ()
        self._stop = threading.Event()
        self.check(announce=False)  # what already exists is the baseline

    def check(self, announce: bool = True) -> None:
        signature = runs_signature(self.root)
        if signature == self._signature:
            return
        self._signature = signature
        for name in (row[0] for row in signature):
            status = runs.read_status(self.root / name)
            before = self.states.get(name)
            self.states[name] = status.get("state")
            said = announcement(name, before, status) if announce else None
            if said:
                self.send(said[0], said[1], name)

    def start(self, interval_s: float = 2.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - a notification is never worth stopping the app for
                    continue
        threading.Thread(target=loop, daemon=True, name="slm-studio-notify").start()

    def stop(self) -> None:
        self._stop.set()


class Notifier:
    """desktop-notifier in its own event loop thread; clicking a notification calls `on_click(run)`."""

    def __init__(self, on_click: Callable[[str], None]):
        import asyncio

        from desktop_notifier import DesktopNotifier

        self.on_click = on_click
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="slm-studio-notifier").start()
        self.notifier = DesktopNotifier(app_name="SLM Studio", app_icon=None)

    def send(self, title: str, body: str, run: str) -> concurrent.futures.Future:
        """Shows it without waiting; the future is done once the notification server has taken it."""
        import asyncio

        coro = self.notifier.send(title=title, message=body, on_clicked=lambda: self.on_click(run))
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

"""The TensorBoard watchdog (`python -m studio.board STUDIO_PID -- COMMAND`): its command must not outlive
the Studio, however the Studio ends, nor the watchdog itself when it is told to stop."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def processes():
    """Every process a test starts; whatever still runs at its end is killed with its children."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait()


def watchdog(parent_pid: int, processes: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "studio.board", str(parent_pid), "--", *SLEEPER], env=env)
    processes.append(process)
    return process


def command_of(process: subprocess.Popen, seconds: float = 20) -> int:
    """The pid of the command the watchdog started (its only child)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        children = psutil.Process(process.pid).children()
        if children:
            return children[0].pid
        time.sleep(0.05)
    raise AssertionError("the watchdog started no command")


def gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped by its parent
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_stops_the_watchdog_and_its_command(processes):
    process = watchdog(os.getpid(), processes)
    command = command_of(process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert gone(command)


def test_the_command_stops_when_the_studio_process_is_gone(processes):
    studio = subprocess.Popen(SLEEPER)
    processes.append(studio)
    process = watchdog(studio.pid, processes)
    command = command_of(process)
    studio.kill()
    studio.wait()
    assert process.wait(15) is not None
    assert gone(command)

"""A real `slm serve` process for tests (shared helpers, not a test module)."""

import os
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(*args: str, seconds: float = 120):
    """(process, "http://127.0.0.1:PORT") of `python -m slm_core serve ARGS... --port PORT`, once it answers
    HTTP at all (a 401 from a server that wants a key counts). The caller terminates the process."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PYTHONFAULTHANDLER": "1"}  # a server that will not stop shows where its threads are (stop_serve)
    process = subprocess.Popen([sys.executable, "-m", "slm_core", "serve", *args, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("slm serve exited: " + process.stdout.read().decode()[-2000:])
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=2).close()
            return process, base
        except urllib.error.HTTPError:
            return process, base
        except (ConnectionError, urllib.error.URLError, TimeoutError):
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"slm serve did not answer within {seconds:.0f} s")


def stop_serve(process, seconds: float = 20) -> None:
    """SIGTERM (what a service manager sends) must end `slm serve` within SECONDS; if it does not, the
    failure shows every thread's stack (faulthandler prints them on SIGABRT)."""
    import signal
    import subprocess

    process.terminate()
    try:
        process.wait(seconds)
        return
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    raise AssertionError(f"slm serve still ran {seconds:.0f} s after SIGTERM:\n"
                         + process.stdout.read().decode(errors="replace")[-6000:])

"""The Studio server's memory under a stream of page sessions: RSS after every batch of new sessions,
with the Studio's bound on kept sessions (studio.app.STATE_SESSIONS) against Gradio's default (10,000).

Each "session" is what a page reload or a new API client is to the server: a fresh session hash that
calls the Train tab's refresh and the Runs tab's listing. Gradio keeps a copy of the page's config per
session; without a bound the server grows with every reload, for good.

    python benchmarks/bench_studio_memory.py [--sessions 600] [--every 100]

Figures that set constants:
- STATE_SESSIONS (studio/app.py): each kept session held ~0.6 MB (its copy of the page's config).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
SERVER = ("import sys; from studio.app import build_app, launch; "
          "launch(build_app(sys.argv[1]), port=int(sys.argv[2]), state_session_capacity=int(sys.argv[3]))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(runs_dir: Path, capacity: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(runs_dir), str(port), str(capacity)], cwd=REPO,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(base + "/config", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the Studio did not start")


def soak(base: str, pid: int, sessions: int, every: int) -> list[tuple[int, float]]:
    """(sessions so far, RSS MB) after each batch."""
    process, points = psutil.Process(pid), []
    with httpx.Client(timeout=60) as http:
        for i in range(1, sessions + 1):
            session = uuid.uuid4().hex
            for api, data in (("train_refresh", [None, "step", False]), ("runs_list", [None])):
                http.post(f"{base}/gradio_api/run/{api}", json={"data": data, "session_hash": session})
            if i % every == 0:
                points.append((i, process.memory_info().rss / 2**20))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from studio.app import STATE_SESSIONS

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, capacity in (("studio", STATE_SESSIONS), ("gradio default", 10_000)):
            proc, base = start(Path(tmp) / label.replace(" ", "-"), capacity)
            try:
                results[label] = soak(base, proc.pid, args.sessions, args.every)
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"{'sessions':>9} " + " ".join(f"{label + ' RSS MB':>22}" for label in results))
    for row in zip(*results.values()):
        print(f"{row[0][0]:>9} " + " ".join(f"{mb:>22.0f}" for _, mb in row))
    growth = {label: points[-1][1] - points[0][1] for label, points in results.items()}
    print("growth after the first batch: " + ", ".join(f"{k} {v:+.0f} MB" for k, v in growth.items()) +
          f" (kept sessions: studio {STATE_SESSIONS}, gradio 10,000)")


if __name__ == "__main__":
    main()

"""Training started from the Studio against the same run started with `slm train`, same machine.

Prints tokens/s of both (median over steps after warm-up) and their ratio, the Studio server's peak
RSS and CPU use while the run trains and the page watches it, and the refresh round trip.
Targets: Studio-started training >= 0.95x the CLI's tokens/s; server RSS < 500 MB during a run.

The Studio is `python launch.py` in its own process; the run is started through its `train_start`
endpoint (what the Start button calls). A watcher polls the live view every 1.5 s like an open
page: `--watcher client` (gradio_client calling the same endpoint the page's timer calls) or
`--watcher browser` (a real Chromium with the Train tab open; it also loads the Model tab's
estimate, which imports torch into the server, as a person's first visit does).

    python benchmarks/bench_studio.py [--steps 80] [--watcher browser|client]
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slm_core.run import runs  # noqa: E402
from studio.helper import IDLE_S  # noqa: E402

# Page fields the benchmark types in (by their labels), on top of the recipe's values.
PAGE = {"Precision": "fp32", "Evaluate every": 1000, "Checkpoint every": 1000, "Use at most N characters": 2_000_000}
ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def tokens_per_sec(run_dir: Path, skip: int) -> float:
    rows = [r for r in runs.read_metrics(run_dir) if r["kind"] == "train" and r["step"] > skip]
    return statistics.median(r["tokens_per_sec"] for r in rows)


def run_cli(studio_run: Path, root: Path) -> Path:
    """`slm train` with exactly the arguments the Studio's worker got (read from its log's first line)."""
    args = shlex.split(studio_run.joinpath("log.txt").read_text().splitlines()[0].removeprefix("$ "))[1:]
    args[args.index("--name") + 1], args[args.index("--runs-dir") + 1] = "cli", str(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "cli.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "slm_core", *args], cwd=REPO, env=ENV, stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    return root / "cli"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(root)], cwd=REPO,
                            env=ENV, stdout=open(root.parent / "server.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the Studio did not start")


def start_args(client, steps: int) -> list:
    """train_start's inputs: the page as it opens (the default recipe) with PAGE and the steps typed in."""
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/train_start"]
    values = [p.get("parameter_default") for p in info["parameters"]]
    typed = {**PAGE, "Steps": steps}
    for i, param in enumerate(info["parameters"]):
        if param["label"] in typed:
            values[i] = typed[param["label"]]
    values[1] = "studio"  # the run name
    return values


class Watcher:
    """Polls the live view every 1.5 s (API client) or keeps a real browser on the Train tab."""

    def __init__(self, url: str, kind: str):
        self.url, self.kind, self.latencies, self.stop = url, kind, [], threading.Event()
        self.thread = threading.Thread(target=self._browser if kind == "browser" else self._client, daemon=True)
        self.ready = threading.Event()
        self.thread.start()
        self.ready.wait(180)

    def _client(self) -> None:
        from gradio_client import Client

        client = Client(self.url, verbose=False)
        self.ready.set()
        while not self.stop.is_set():
            started = time.perf_counter()
            client.predict(None, "step", False, api_name="/train_refresh")
            self.latencies.append(time.perf_counter() - started)
            self.stop.wait(1.5)

    def _browser(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(self.url)
            page.locator("#model-estimate").filter(has_text="Parameters").wait_for(timeout=120_000)
            page.get_by_role("tab", name="Train", exact=True).click()
            self.ready.set()
            while not self.stop.is_set():
                page.wait_for_timeout(500)
            browser.close()


def run_studio(steps: int, root: Path, watcher_kind: str) -> dict:
    from gradio_client import Client

    root.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(root)
    server = psutil.Process(proc.pid)
    try:
        watcher = Watcher(url, watcher_kind)
        client = Client(url, verbose=False)
        values = start_args(client, steps)
        cpu0, rss, t0 = server.cpu_times(), [], time.time()
        print(client.predict(*values, api_name="/train_start")[0])
        run_dir = root / "studio"
        helper_rss = [0.0]
        while runs.read_status(run_dir).get("state") not in runs.TERMINAL_STATES:
            rss.append(server.memory_info().rss / 2**20)
            helper_rss.append(sum(p.memory_info().rss for p in server.children()
                                  if "studio.helper" in " ".join(p.cmdline())) / 2**20)
            time.sleep(0.5)
        cpu1, wall = server.cpu_times(), time.time() - t0
        watcher.stop.set()
        watcher.thread.join(30)
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        return {"run_dir": run_dir, "rss_max_mb": max(rss), "helper_rss_max_mb": max(helper_rss),
                "helper_alive_at_end": helper_rss[-1] > 0, "cpu_percent": 100 * cpu / wall,
                "latency_ms": 1000 * statistics.median(watcher.latencies) if watcher.latencies else None}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the median")
    parser.add_argument("--watcher", choices=["client", "browser"], default="browser")
    parser.add_argument("--repeats", type=int, default=1, help="Studio/CLI pairs; the ratio is their median")
    args = parser.parse_args()
    pairs, studios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ENV.setdefault("SLM_CACHE_DIR", str(tmp / "cache"))
        for i in range(args.repeats):
            studio = run_studio(args.steps, tmp / f"studio-runs-{i}", args.watcher)  # the first fills the cache
            cli = run_cli(studio["run_dir"], tmp / f"cli-runs-{i}")
            pairs.append((tokens_per_sec(cli, args.skip), tokens_per_sec(studio["run_dir"], args.skip)))
            studios.append(studio)
        command = (studios[0]["run_dir"] / "log.txt").read_text().splitlines()[0]
    print(command)
    print(f"{args.steps} steps, watcher: {args.watcher}, {args.repeats} pair(s)")
    print(f"{'':<28}{'slm train':>12}{'Studio':>12}{'ratio':>8}")
    for cli_tps, studio_tps in pairs:
        print(f"{'training tokens/s (median)':<28}{cli_tps:>12,.0f}{studio_tps:>12,.0f}{studio_tps / cli_tps:>8.2f}")
    ratio = statistics.median(s / c for c, s in pairs)
    print(f"median ratio {ratio:.2f} (target >= 0.95)")
    latency = [s["latency_ms"] for s in studios if s["latency_ms"]]
    print(f"Studio server during the run: peak RSS {max(s['rss_max_mb'] for s in studios):.0f} MB (target < 500), "
          f"CPU {statistics.median(s['cpu_percent'] for s in studios):.1f}% of one core"
          + (f", refresh round trip {statistics.median(latency):.0f} ms" if latency else ""))
    print(f"helper process (Model-tab estimate, torch; exits after {IDLE_S:.0f} s idle): peak RSS "
          f"{max(s['helper_rss_max_mb'] for s in studios):.0f} MB, "
          f"{'still alive' if studios[-1]['helper_alive_at_end'] else 'gone'} when the last run ended")


if __name__ == "__main__":
    main()

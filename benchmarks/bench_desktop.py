"""The desktop window against the browser route, side by side in one run: seconds from the command to a page
showing its tabs, cold (a fresh HOME and XDG folders: no Qt WebEngine or Chromium profile yet) and warm (the
same folders again), and the memory of each route while the page is open.

- desktop: `slm-studio` (tests/desktop/window_driver.py runs its main() and writes when the DOM shows the tabs)
  on an Xvfb display; its server and Qt live in one process, Qt WebEngine's helpers are its children.
- browser: `python launch.py`, then (once it answers) Debian's Chromium, headless through playwright
  (--no-sandbox --disable-gpu), opening the page until its tabs show.

    python benchmarks/bench_desktop.py [--repeats 3] [--screenshot PNG] [--json FILE]

Memory is RSS summed over a route's processes (shared pages count once per process) and PSS (shared pages
split between the processes that share them: what the route costs the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "desktop" / "window_driver.py"
ENV = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
TABS = "[role=tab]"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory(processes: list[psutil.Process]) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over the processes still alive."""
    rss = pss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
    return rss / MIB, pss / MIB


def tree(pid: int) -> tuple[psutil.Process, list[psutil.Process]]:
    root = psutil.Process(pid)
    return root, root.children(recursive=True)


def start_display() -> tuple[subprocess.Popen, str]:
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as display:
        return xvfb, ":" + display.readline().strip()


def user_env(home: Path) -> dict:
    return dict(ENV, HOME=str(home), XDG_STATE_HOME=str(home / "state"), XDG_CONFIG_HOME=str(home / "config"),
                XDG_DATA_HOME=str(home / "data"), XDG_CACHE_HOME=str(home / "cache"))


def desktop_once(home: Path, display: str, runs: Path, screenshot: str = "") -> dict:
    out = Path(tempfile.mkdtemp(dir=home.parent))
    hold = out / "close"
    extra = ["--screenshot", screenshot, "--settle"] if screenshot else []
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(out / "driver"), "--hold-until", str(hold), *extra,
                             "--", "--runs-dir", str(runs)], env=dict(user_env(home), DISPLAY=display), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page = out / "driver" / "page.json"
    while not page.exists():
        if proc.poll() is not None:
            raise SystemExit(f"slm-studio exited ({proc.returncode}) before its page showed")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    time.sleep(2)  # the page's load events finish: memory as it stays while open
    root, children = tree(proc.pid)
    engine = [c for c in children if "QtWebEngine" in c.name()]
    window = memory([root, *[c for c in children if c not in engine]])  # the server, Qt, any Studio helper
    engine = memory(engine)
    hold.touch()
    proc.wait(120)
    return {"seconds": seconds, "server_rss": window[0], "server_pss": window[1], "web_rss": engine[0],
            "web_pss": engine[1]}


def browser_once(home: Path, runs: Path) -> dict:
    from playwright.sync_api import sync_playwright

    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(runs)],
                              env=user_env(home), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("launch.py exited before it served") from None
                time.sleep(0.02)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(home / "chromium"), executable_path=shutil.which("chromium"), headless=True,
                args=["--no-sandbox", "--disable-gpu"])
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="commit", timeout=120_000)
            page.wait_for_function(f"document.querySelectorAll('{TABS}').length >= 10", timeout=120_000)
            seconds = time.perf_counter() - started
            time.sleep(2)
            chromium = [p for p in psutil.process_iter(["cmdline"])
                        if any(str(home / "chromium") in part for part in (p.info["cmdline"] or []))]
            browser = [p for p in chromium if not any(a.startswith("--type=") for a in p.info["cmdline"])]
            web = memory(list({p.pid: p for b in browser for p in [b, *b.children(recursive=True)]}.values()))
            root, children = tree(server.pid)
            served = memory([root, *children])
            context.close()
    finally:
        server.terminate()
        server.wait(60)
    return {"seconds": seconds, "server_rss": served[0], "server_pss": served[1], "web_rss": web[0],
            "web_pss": web[1]}


def summary(values: list[float], unit: str) -> str:
    spread = " / ".join(f"{v:.1f}" for v in values)
    return f"{statistics.median(values):.1f} {unit} ({spread})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", default="", help="also save a PNG of the window (one more launch)")
    parser.add_argument("--json", default="", help="also write every measurement here")
    args = parser.parse_args()
    if shutil.which("Xvfb") is None or shutil.which("chromium") is None:
        raise SystemExit("needs Xvfb and chromium (apt-get install xvfb chromium)")
    root = Path(tempfile.mkdtemp(prefix="bench-desktop-"))
    xvfb, display = start_display()
    load_before = os.getloadavg()
    rows: dict[str, list[dict]] = {k: [] for k in ("desktop cold", "desktop warm", "browser cold", "browser warm")}
    try:
        for i in range(args.repeats):  # interleaved, so that both routes see the same machine
            home = root / f"desktop-{i}"
            rows["desktop cold"].append(desktop_once(home, display, root / "runs"))
            rows["desktop warm"].append(desktop_once(home, display, root / "runs"))
            home = root / f"browser-{i}"
            rows["browser cold"].append(browser_once(home, root / "runs"))
            rows["browser warm"].append(browser_once(home, root / "runs"))
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.1f} s" for k, v in rows.items()),
                  flush=True)
        if args.screenshot:  # one more launch, not timed: the screenshot waits for the page to settle
            desktop_once(root / "desktop-0", display, root / "runs", args.screenshot)
    finally:
        xvfb.terminate()
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    cpus = psutil.cpu_count()
    print(f"\nmachine: {cpus} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"(1-minute), {args.repeats} repeats each, interleaved; median (each run)\n")
    width = 44
    print(f"{'':34}{'slm-studio (Qt WebEngine window)':<{width}}{'launch.py + headless Chromium'}")
    for label, key, unit in (("to the page with its tabs, cold", "seconds", "s"),
                             ("to the page with its tabs, warm", "seconds", "s")):
        kind = label.rsplit(" ", 1)[1]
        desktop = summary([r[key] for r in rows[f"desktop {kind}"]], unit)
        browser = summary([r[key] for r in rows[f"browser {kind}"]], unit)
        print(f"{label:34}{desktop:<{width}}{browser}")
    warm = {route: rows[f"{route} warm"] for route in ("desktop", "browser")}
    for label, key in (("server process RSS", "server_rss"), ("web engine processes RSS", "web_rss"),
                       ("server process PSS", "server_pss"), ("web engine processes PSS", "web_pss")):
        desktop = summary([r[key] for r in warm["desktop"]], "MiB")
        browser = summary([r[key] for r in warm["browser"]], "MiB")
        print(f"{label:34}{desktop:<{width}}{browser}")
    ratio = statistics.median(r["seconds"] for r in warm["desktop"]) / statistics.median(
        r["seconds"] for r in warm["browser"])
    print(f"\nwarm time ratio desktop / browser: {ratio:.2f}  (desktop: the server process is the window too)")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": [load_before, load_after], **rows}, indent=1))


if __name__ == "__main__":
    main()

"""The Studio in a real browser (Debian's Chromium driven by playwright): start the app, train a tiny
run from the Train tab, watch it finish, chat with it, and screenshot every tab.

Screenshots go to $SLM_SCREENSHOTS, else a pytest temporary folder (printed at the end).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TABS = ["Model", "Data", "Train", "Runs", "Chat"]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def studio(tmp_path):
    """(url, runs_dir): launch.py in a subprocess on a free port with its own runs dir."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api")
    port, runs_dir = free_port(), tmp_path / "runs"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(runs_dir)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, tmp_path / "server.log")
        yield url, runs_dir
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        _stop_leftover_worker(runs_dir)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the Studio exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Studio did not answer within {timeout} s: {log.read_text()[-3000:]}")


def _stop_leftover_worker(runs_dir: Path) -> None:
    from slm_core import runs

    for run in runs.list_runs(runs_dir):
        if run["state"] in ("running", "paused"):
            runs.request(Path(run["path"]), "stop")


def _set(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")  # Gradio numbers commit on blur


def _pick(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(600)


def _shoot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_train_a_tiny_run_watch_it_and_chat_with_it(studio, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, runs_dir = studio
    shots = Path(os.environ.get("SLM_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        expect(page.locator("#model-estimate")).to_contain_text("Parameters", timeout=90_000)
        _shoot(page, shots, "1-model")
        # A recipe prefills every tab's fields; then shrink the model (Model tab) and the data (Data tab):
        # Start reads every tab.
        _tab(page, "Train")
        _pick(page, "Recipe", "tiny-gpt-cpu")
        expect(page.locator("#train-command")).to_contain_text("tiny-gpt-cpu", timeout=20_000)
        page.wait_for_timeout(1500)  # the recipe's values land in the fields
        _tab(page, "Model")
        expect(page.get_by_label("Family", exact=True)).to_have_value("gpt2", timeout=10_000)
        _set(page, "Layers", "1")
        _set(page, "Context (tokens)", "64")
        _tab(page, "Data")
        _set(page, "Use at most N characters", "300000")
        _set(page, "BPE vocabulary size", "512")
        page.get_by_role("button", name="Preview").click()
        expect(page.locator("#data-summary")).to_contain_text("characters", timeout=60_000)
        page.get_by_role("button", name="Tokenize now (cached for every run)").click()
        expect(page.locator("#data-tokens")).to_contain_text("validation tokens", timeout=120_000)
        _shoot(page, shots, "2-data")
        _tab(page, "Train")
        for label, value in (("Steps", "24"), ("Batch size", "4"), ("Evaluate every", "12"),
                             ("Checkpoint every", "12"), ("Warmup steps", "2")):
            _set(page, label, value)
        command = page.locator("#train-command")
        expect(command).to_contain_text("train.max_steps=24", timeout=20_000)
        expect(command).to_contain_text("model.n_layer=1")
        expect(command).to_contain_text("tokenizer.vocab_size=512")
        page.locator("#train-start").click()
        expect(page.locator("#train-message")).to_contain_text("Started", timeout=30_000)
        # The live view: the loss curve gets points while the run trains, then the run finishes.
        expect(page.locator("#train-plot g.trace.scatter").first).to_be_attached(timeout=120_000)
        expect(page.locator("#train-progress [data-state='finished']")).to_be_attached(timeout=180_000)
        expect(page.locator("#train-samples table")).to_be_attached(timeout=10_000)
        assert page.locator("#train-plot g.trace.scatter").count() >= 4  # loss, val loss, lr, tokens/s, ...
        _shoot(page, shots, "3-train")
        # A reload reconnects to the run with its whole history.
        page.reload()
        _tab(page, "Train")
        expect(page.locator("#train-progress [data-state='finished']")).to_be_attached(timeout=60_000)
        expect(page.locator("#train-progress")).to_contain_text("step 24 / 24")
        _tab(page, "Runs")
        expect(page.locator("#runs-table")).to_contain_text("finished", timeout=30_000)
        _shoot(page, shots, "4-runs")
        _tab(page, "Chat")
        expect(page.get_by_label("Model", exact=True)).not_to_have_value("", timeout=20_000)
        page.locator("#chat-input textarea").fill("Once upon a time")
        page.locator("#chat-send").click()
        bot = page.locator("#chat-bot .bot").last
        expect(bot).not_to_be_empty(timeout=90_000)
        expect(page.locator("#chat-stats")).to_contain_text("tokens/s", timeout=90_000)
        assert bot.inner_text().strip()
        _shoot(page, shots, "5-chat")
        browser.close()
    foreign = [u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert not foreign, f"the page reached outside this machine: {foreign[:5]}"
    print(f"screenshots: {shots}")

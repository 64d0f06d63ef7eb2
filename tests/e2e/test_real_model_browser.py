"""Real models in a real browser: the Model tab's picker shows a cached Llama-3.2-1B and what it needs here,
Download of an uncached Hub id says on the page (offline) what the cache holds, the Hub browser offline lists
the cache instead, and the Train tab's distill mode shows teacher vs student before "shrink this model" starts.
The checkpoint is header-only (its real shapes, no weights): nothing here loads it."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_shapes import LLAMA_32_1B, hub_cache_snapshot  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS, _pick, _set, _shoot, _tab, running_studio  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_pick_a_cached_real_model_see_its_memory_download_offline_and_shrink(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect, sync_playwright

    cache = tmp_path / "hub"
    hub_cache_snapshot(cache, "meta-llama/Llama-3.2-1B", LLAMA_32_1B)
    shots = Path(os.environ.get("SLM_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with running_studio(tmp_path, tmp_path / "runs", HF_HUB_CACHE=str(cache)) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            expect(page.locator("#model-estimate")).to_contain_text("Parameters", timeout=120_000)
            _pick(page, "Real model", "meta-llama/Llama-3.2-1B (Hugging Face cache)")
            details = page.locator("#model-real-details")
            expect(details).to_contain_text("QLoRA, int4 base", timeout=60_000)
            expect(details).to_contain_text("1.2B parameters · context 131,072 · bf16 · 2.47 GB on disk")
            _shoot(page, shots, "model-real", full_page=True)
            real = page.get_by_label("Real model", exact=True)
            real.fill("Qwen/Qwen2.5-0.5B-Instruct")
            real.press("Enter")
            expect(details).to_contain_text("not downloaded yet", timeout=30_000)
            page.locator("#model-real-download").click()
            expect(details).to_contain_text("HF_HUB_OFFLINE is set", timeout=30_000)
            expect(details).to_contain_text("holds: meta-llama/Llama-3.2-1B")

            # Find a model: offline, the search says so at once and lists the cache instead (issue 27).
            page.get_by_text("Find a model on the Hugging Face Hub").click()
            page.locator("#model-find-search").click()
            found = page.locator("#model-find-results")
            expect(found).to_contain_text("HF_HUB_OFFLINE is set", timeout=30_000)
            expect(found).to_contain_text("meta-llama/Llama-3.2-1B")
            _pick(page, "Hub model", "meta-llama/Llama-3.2-1B (cache)")
            expect(page.locator("#model-find-details")).to_contain_text("In the Hugging Face cache", timeout=30_000)

            _tab(page, "Train")
            page.get_by_label("Distill from a teacher", exact=True).check()
            teacher = page.get_by_label("Teacher", exact=True)
            teacher.fill("meta-llama/Llama-3.2-1B")  # the cached Hub id, as `slm shrink` takes it
            teacher.press("Enter")
            expect(page.locator("#train-teacher-details")).to_contain_text("Full fine-tune", timeout=60_000)
            if page.locator("#train-shrink-layers input").is_enabled():
                _set(page, "Student layers", "8")
                expect(page.locator("#train-shrink-summary")).to_contain_text("749.2M", timeout=60_000)
                expect(page.locator("#train-command")).to_contain_text("distill.shrink_layers=8", timeout=20_000)
            _shoot(page, shots, "train-shrink", full_page=True)
            browser.close()
    print(f"screenshots: {shots}")

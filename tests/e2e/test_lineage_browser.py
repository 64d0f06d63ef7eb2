"""The Runs tab's family tree in a real browser: the graph's nodes (by kind) and edges (by relation) read from the
plotly figure on the page, a node picked opens its panel, and compare-with-parent shows the score delta."""

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
READ_FIGURE = """() => {
  const plot = document.querySelector('#lineage-figure .js-plotly-plot');
  return plot && plot.data ? plot.data.map(t => ({name: t.name, text: t.text, customdata: t.customdata})) : null;
}"""


def test_the_family_tree_reads_back_from_the_page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROMIUM_ARGS, _tab, running_studio
    from test_lineage import old_forest

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    old_forest(runs_dir)
    shutil.copytree(runs_dir / "lora-a" / "export" / "gguf-new", runs_dir / "lora-a" / "export" / "gguf-newer")
    (runs_dir / "pre" / "evals").mkdir()
    (runs_dir / "pre" / "evals" / "report-1.json").write_text(json.dumps({"ppl_own": 3.0}))
    with running_studio(tmp_path, runs_dir) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        _tab(page, "Runs")
        page.wait_for_function(f"({READ_FIGURE})() && ({READ_FIGURE})().some(t => t.name === 'quantized')",
                               timeout=60_000)
        traces = {t["name"]: t for t in page.evaluate(READ_FIGURE)}
        assert {"pretrain", "lora", "quantized", "merge", "shrink", "hub", "report"} <= set(traces)
        assert traces["quantized"]["customdata"] == ["lora-a/quantized/int8"]
        relations = sorted(traces["relations"]["text"])
        assert relations.count("adapter_of") == 2 and {"quantized_from", "merge_of", "teacher", "evaluated"} <= \
            set(relations)

        page.locator("#lineage-node").get_by_label("Node", exact=True).click()
        page.get_by_role("option", name="lora-a", exact=True).click()
        sync_api.expect(page.locator("#lineage-panel")).to_contain_text("adapter_of pre", timeout=20_000)
        page.locator("#lineage-compare").click()
        sync_api.expect(page.locator("#lineage-delta")).to_contain_text("ppl", timeout=20_000)
        browser.close()

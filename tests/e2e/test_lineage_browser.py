"""The Runs tab's family tree in a real browser: the graph's nodes (by kind) and edges (by relation) read from the
plotly figure on the page, a node picked opens its panel, compare-with-parent shows the score delta, a node clicked
in the figure is picked, and "Chat with it" lands on the Chat tab with that model picked."""

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
POINT_OF = """(name) => {  // where a node's marker is drawn, in the page's viewport
  const plot = document.querySelector('#lineage-figure .js-plotly-plot');
  const trace = plot.data.find(t => (t.customdata || []).includes(name));
  const i = trace.customdata.indexOf(name), xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis;
  const box = plot.querySelector('.main-svg').getBoundingClientRect();
  return {x: box.left + xa._offset + xa.l2p(trace.x[i]), y: box.top + ya._offset + ya.l2p(trace.y[i])};
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
    (runs_dir / "pre" / "checkpoints" / "best" / "state.json").write_text("{}")  # Chat offers pre and the int8
    from studio.models import model_sources

    first = model_sources(runs_dir)[0][0]  # what Chat shows before anything is opened in it
    clicked = "pre" if first != "pre" else "lora-a/quantized/int8"
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

        page.locator("#lineage-figure").scroll_into_view_if_needed()
        point = page.evaluate(POINT_OF, clicked)
        page.mouse.click(point["x"], point["y"])
        sync_api.expect(page.locator("#lineage-node input")).to_have_value(clicked, timeout=20_000)
        came_from = "Came from: none" if clicked == "pre" else "quantized_from lora-a"
        sync_api.expect(page.locator("#lineage-panel")).to_contain_text(came_from, timeout=20_000)
        page.locator("#lineage-chat").click()
        sync_api.expect(page.locator("#tab-chat")).to_be_visible(timeout=20_000)
        sync_api.expect(page.locator("#chat-model input")).to_have_value(clicked, timeout=20_000)
        browser.close()

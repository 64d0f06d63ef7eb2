"""The Evaluate tab's report cards with the real engine in the tab's job process: a run beside its int8
version on a shipped task, the files to download, the command that does the same, and the errors."""

import json

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional 'eval' extra")

from studio import report_panel  # noqa: E402
from studio.models import model_sources  # noqa: E402
from studio.style import mark  # noqa: E402


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    return copy_of_tiny_run(tmp_path_factory.mktemp("report-runs"), quantize=True)


@pytest.mark.slow
def test_report_cards_for_a_run_and_its_int8_version(run, helper):
    runs_dir, name = run
    sources = [path for _, path in model_sources(runs_dir)]
    text, markdown, files, command = report_panel.make_cards(helper, runs_dir, sources, "best", ["opposites"], 3,
                                                             {"url": ""})
    assert text.startswith(mark("ok")) and "2 report cards" in text
    assert f"| {name} |" in markdown and f"| {name}/quantized/int8 |" in markdown and "slm_opposites" in markdown
    cards = [json.loads(open(f).read()) for f in files if f.endswith(".json")]
    assert len(cards) == 2 and cards[0]["parameters"] == cards[1]["parameters"]
    assert command.startswith(f"From a shell: `slm eval {name} {name}/quantized/int8 ")
    assert command.endswith("--tasks opposites --limit 3`")


def test_nothing_to_measure_no_model_and_an_unreachable_judge(run, helper):
    runs_dir, name = run
    source = [str(runs_dir / name)]
    assert "Pick one or more" in report_panel.make_cards(helper, runs_dir, [], "best", ["opposites"], 3, {})[0]
    assert "needs something to measure" in report_panel.make_cards(helper, runs_dir, source, "best", [], 3, {"url": ""})[0]
    judge = {"url": "http://127.0.0.1:9/v1", "model": "", "key": None, "prompts": None, "limit": 2, "seed": 0}
    text, markdown, files, _ = report_panel.make_cards(helper, runs_dir, source, "best", [], None, judge)
    assert text.startswith(mark("error")) and "no judge answers at http://127.0.0.1:9/v1" in text
    assert files is None

"""The Evaluate tab with the real engine: originals beside their quantized versions on the same data, any
data source, and a model that cannot be evaluated reported without losing the others' rows."""

import shutil

import pytest

from studio import jobs
from studio.jobs import JobHelper
from studio.models import model_sources
from studio.tabs import evaluate as tab


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """(runs_dir, name) of a copy of the session's tiny run with an int8 version beside it."""
    root, name = tiny_run
    runs_dir = tmp_path_factory.mktemp("evaluate-runs")
    shutil.copytree(root / name, runs_dir / name)
    jobs.quantize(str(runs_dir / name), method="int8", report=False)  # in this process: no helper needed
    return runs_dir, name


@pytest.fixture(scope="module")
def helper():
    helper = JobHelper()
    yield helper
    helper.close()


def test_an_original_and_its_int8_version_on_their_own_validation_data(run, helper):
    runs_dir, name = run
    sources = [path for _, path in model_sources(runs_dir)]
    assert len(sources) == 2  # the run and its int8 version
    text, table, command = tab.evaluate_models(helper, runs_dir, sources, "best", "", "val", None, 3000)
    assert text.startswith("✅") and "2 models" in text
    (model_a, data_a, tokens_a, loss_a, ppl_a, _), (model_b, data_b, _, loss_b, ppl_b, _) = table
    assert (model_a, model_b) == (name, f"{name}/quantized/int8")
    assert data_a == data_b == "builtin"  # the run's own data (its config), for the artifact too
    assert int(tokens_a.replace(",", "")) >= 3000
    assert 1 < ppl_a < 600 and abs(ppl_b - ppl_a) < 0.05 * ppl_a  # int8 is close to the original
    assert loss_a == pytest.approx(__import__("math").log(ppl_a), abs=1e-3)
    assert command == f"From a shell: `slm eval {name} {name}/quantized/int8 --max-tokens 3000`"


def test_any_data_source_and_a_model_that_fails_is_named_with_its_reason(run, helper, tmp_path):
    runs_dir, name = run
    text_file = tmp_path / "poem.txt"
    text_file.write_text("The cat sat on the mat and looked at the little dog. " * 400)
    sources = [str(runs_dir / name), str(tmp_path / "no-such-model")]
    text, table, command = tab.evaluate_models(helper, runs_dir, sources, "latest", str(text_file), "val", 16, 500)
    assert text.startswith("❌") and "no-such-model" in text
    assert [row[:2] for row in table] == [[name, "poem.txt"]]  # the good model still has its row
    assert f"--data {text_file}" in command and "--stride 16" in command and "--checkpoint latest" in command
    assert "Pick one or more" in tab.evaluate_models(helper, runs_dir, [], "best", "", "val", None, None)[0]
    text, table, _ = tab.evaluate_models(helper, runs_dir, [str(runs_dir / name)], "best", str(tmp_path / "x.txt"),
                                         "val", None, None)
    assert text.startswith("❌") and "x.txt" in text and table == []

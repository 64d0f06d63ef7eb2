"""The Evaluate tab with the real engine: originals beside their quantized and exported versions on the same
data, any data source, and a model that cannot be evaluated reported without losing the others' rows."""

import math

import pytest

from studio.models import model_sources
from studio.style import mark
from studio.tabs import evaluate as tab


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    """(runs_dir, name) of a copy of the session's tiny run with int8 and Hugging Face versions beside it."""
    return copy_of_tiny_run(tmp_path_factory.mktemp("evaluate-runs"), quantize=True, export_hf=True)


def test_an_original_beside_its_int8_and_hugging_face_versions_on_its_own_validation_data(run, helper):
    runs_dir, name = run
    sources = [path for _, path in model_sources(runs_dir)]
    assert len(sources) == 3  # the run, its int8 version, its Hugging Face export
    text, table, command = tab.evaluate_models(helper, runs_dir, sources, "best", "", "auto", None, 3000)
    assert text.startswith(mark("ok")) and "3 models" in text
    assert [row[0] for row in table] == [name, f"{name}/quantized/int8", f"{name}/export/hf"]
    assert {row[1] for row in table} == {"builtin"}  # the run's own data settings, for its artifacts too
    assert int(table[0][2].replace(",", "")) >= 3000
    (loss, ppl, _), (_, ppl_int8, _), (_, ppl_hf, _) = [map(float, row[3:]) for row in table]
    assert 1 < ppl < 600 and loss == pytest.approx(math.log(ppl), abs=1e-3)
    assert abs(ppl_int8 - ppl) < 0.05 * ppl  # int8 stays close to the original
    assert ppl_hf == pytest.approx(ppl, rel=1e-4)  # the export is the same model on the very same text
    assert command == (f"From a shell: `slm eval {name} {name}/quantized/int8 {name}/export/hf --runs-dir {runs_dir} "
                       "--max-tokens 3000`")


def test_any_data_source_and_a_model_that_fails_is_named_with_its_reason(run, helper, tmp_path):
    runs_dir, name = run
    text_file = tmp_path / "poem.txt"
    text_file.write_text("The cat sat on the mat and looked at the little dog. " * 400)
    sources = [str(runs_dir / name), str(tmp_path / "no-such-model")]
    text, table, command = tab.evaluate_models(helper, runs_dir, sources, "latest", str(text_file), "val", 16, 500)
    assert text.startswith(mark("error")) and "no-such-model" in text
    assert [row[:2] for row in table] == [[name, "poem.txt"]]  # the good model still has its row
    assert f"--data {text_file}" in command and "--stride 16" in command and "--checkpoint latest" in command
    assert "Pick one or more" in tab.evaluate_models(helper, runs_dir, [], "best", "", "val", None, None)[0]
    text, table, _ = tab.evaluate_models(helper, runs_dir, [str(runs_dir / name)], "best", str(tmp_path / "x.txt"),
                                         "val", None, None)
    assert text.startswith(mark("error")) and "x.txt" in text and table == []

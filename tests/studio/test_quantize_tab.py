"""The Quantize tab with the real engine in its helper process: an artifact beside the run, the report
against the original, progress, and errors that leave the page (and the helper) up."""

import json

import pytest

from studio.models import model_sources
from studio.style import mark
from studio.tabs import quantize as tab


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    """(runs_dir, name): a copy of the session's tiny run, so artifacts written here stay here."""
    return copy_of_tiny_run(tmp_path_factory.mktemp("quantize-runs"))


def test_the_tab_offers_what_the_engine_accepts():
    from slm_core.models import quantized as quantize

    assert tab.METHODS == quantize.METHODS and tab.GROUP_SIZES == quantize.GROUP_SIZES
    assert [value for _, value in tab.METHOD_CHOICES] == list(quantize.METHODS)


def test_int8_lands_beside_the_run_with_a_report_against_the_original(run, helper):
    runs_dir, name = run
    progress = []
    text, table, command, existing = tab.quantize_run(helper, runs_dir, name, "best", "int8", 64, True, 2000,
                                                      on_progress=progress.append)
    out = runs_dir / name / "quantized" / "int8"
    assert text.startswith(mark("ok")) and str(out) in text and "tiny/quantized/int8" in text
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["method"] == "int8" and meta["group_size"] is None
    original, int8 = table
    assert original[0] == "original (fp32)" and int8[0] == "int8"
    assert "MB" in original[1] and "×)" in int8[1] and "×)" in int8[2]  # size and memory vs the original
    size_ratio = float(int8[1].split("(")[1].rstrip("×)"))
    assert 0.2 < size_ratio < 0.35  # int8 weights: about a quarter of fp32
    original_ppl, (int8_ppl, delta) = float(original[3]), int8[3].split(" (")
    assert abs(float(int8_ppl) - original_ppl) < 0.05 * original_ppl and delta.startswith(("+", "-"))
    assert float(original[4]) > 0 and "×)" in int8[4]  # tokens/s, side by side
    # Stages as they start (fast ones may be skipped: progress is sent at most ~4 times a second), then done.
    assert progress[0] == {"n": 0, "total": 4, "desc": "loading"} and progress[-1]["n"] == 4
    # --runs-dir: the Studio's runs dir is not ./runs, and a shell does not have the server's environment.
    assert command == (f"From a shell: `slm quantize {name} --method int8 --runs-dir {runs_dir} --report "
                       f"--eval-tokens 2000 --overwrite`")
    assert "`int8`" in existing and "KB" in existing
    assert (f"{name}/quantized/int8", str(out)) in model_sources(runs_dir)  # Chat, Compare, Evaluate, Export


def test_int4_with_its_group_size_and_without_a_report(run, helper):
    runs_dir, name = run
    text, table, command, _ = tab.quantize_run(helper, runs_dir, name, "latest", "int4", 32, False, 2000)
    assert text.startswith(mark("ok")) and [row[0] for row in table] == ["original (fp32)", "int8"]  # not measured
    meta = json.loads((runs_dir / name / "quantized" / "int4-g32" / "quantization.json").read_text())
    assert meta["method"] == "int4" and meta["group_size"] == 32
    assert "--group-size 32 --checkpoint latest --overwrite" in command


def test_mistakes_are_messages_and_the_helper_lives_on(run, helper, tmp_path):
    runs_dir, name = run
    assert "Pick a run" in tab.quantize_run(helper, runs_dir, None, "best", "int8", 64, True, 2000)[0]
    assert "Pick a method" in tab.quantize_run(helper, runs_dir, name, "best", "int3", 64, True, 2000)[0]
    text, table, _, _ = tab.quantize_run(helper, tmp_path, "gone", "best", "int8", 64, True, 2000)
    assert text.startswith(mark("error")) and "gone" in text and table == []
    assert helper.running


def test_the_report_accumulates_every_variant_beside_the_original(run, helper):
    """Bug: int4 after int8 replaced the int8 row; every measured variant stays, side by side."""
    runs_dir, name = run
    tab.quantize_run(helper, runs_dir, name, "best", "int8", 64, True, 2000)
    _, table, _, _ = tab.quantize_run(helper, runs_dir, name, "best", "int4", 64, True, 2000)
    assert [row[0] for row in table] == ["original (fp32)", "int4-g64", "int8"]
    assert all("×)" in row[1] for row in table[1:])

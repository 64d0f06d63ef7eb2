"""`slm eval` beyond one number: the two data defects of the first version, and report cards for a
model beside its quantized version, saved and carried into the model card of an HF export."""

import json
import shutil

import pytest

from slm_core import cli
from slm_core.models.load import load_model
from slm_core.models.quantized import quantize_model, save_quantized
from slm_core.post.evaluate import perplexity
from slm_core.post.export import export_model
from slm_core.post.report_card import model_card, save_card, to_markdown
from slm_core.run.runs import latest_card, run_summary


@pytest.fixture
def run(tiny_char_run, tmp_path):
    """A private copy of the session's tiny character run (report cards are written into it)."""
    copy = tmp_path / "runs" / "char"
    shutil.copytree(tiny_char_run, copy)
    return copy


def test_a_data_file_given_to_eval_is_scored_whole(run, tmp_path):
    paragraphs = [f"The {animal} went to the park on day {i} and played with a red ball." for i, animal in
                  enumerate(["cat", "dog", "fox", "owl"] * 15)]
    text_file = tmp_path / "notes.txt"
    text_file.write_text("\n\n".join(paragraphs))
    row = perplexity(load_model(run), str(text_file))
    # characters: every one of them is a token; the first of each document has no target
    assert row["split"] == "all"
    assert row["tokens"] >= sum(len(p) for p in paragraphs) - len(paragraphs)
    val_only = perplexity(load_model(run), str(text_file), split="val")
    assert val_only["tokens"] < row["tokens"] / 5  # what `slm eval --data` used to score


def test_an_hf_export_is_scored_on_its_origin_runs_validation_data(run, tmp_path, capsys):
    loaded = load_model(run)
    export_dir = tmp_path / "export-hf"
    export_model(loaded.model, loaded.tokenizer, loaded.config, export_dir, "hf", source=str(run))
    assert cli.main(["eval", str(run), str(export_dir), "--max-tokens", "2000"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    (_, tokens_run, loss_run, _, _), (_, tokens_hf, loss_hf, _, _) = lines
    assert tokens_hf == tokens_run and float(loss_hf) == pytest.approx(float(loss_run), abs=1e-3)


def test_report_cards_of_a_model_and_its_int8_version(run, tmp_path):
    loaded = load_model(run)
    int8_dir = run / "quantized" / "int8"
    save_quantized(quantize_model(loaded.model, "int8"), loaded.config, loaded.tokenizer, int8_dir, source=str(run))
    cards = [model_card(str(path), tasks=["opposites"], task_limit=4, eval_tokens=1000) for path in (run, int8_dir)]
    original, int8 = cards
    assert original["parameters"] == int8["parameters"] > 100_000  # int8 counts its weights, not its bytes
    assert int8["size_bytes"] < 0.4 * original["size_bytes"]
    assert abs(int8["ppl_own"] - original["ppl_own"]) < 0.05 * original["ppl_own"]
    assert original["own_data"] == "builtin" and original["tokens_per_sec"] > 0
    assert original["tasks"]["slm_opposites"]["samples"] == 4
    markdown = to_markdown(cards)
    assert markdown.count("\n| ") >= 4 and "slm_opposites" in markdown and "ppl (own data)" in markdown

    files = save_card(original)
    assert files["json"].startswith(str(run / "evals"))  # in the run folder, not inside a checkpoint
    assert json.loads(open(files["json"]).read())["parameters"] == original["parameters"]
    assert latest_card(run)["tasks"] == original["tasks"]
    assert run_summary(run)["scores"].startswith("opposites 0.")  # the Runs table's scores column

    export_dir = tmp_path / "with-card"
    export_model(loaded.model, loaded.tokenizer, loaded.config, export_dir, "hf", source=str(run))
    readme = (export_dir / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers") and "slm_opposites" in readme


def test_eval_cli_report_card_and_its_bad_flags(run, capsys):
    assert cli.main(["eval", str(run), "--tasks", "opposites", "--limit", "3", "--max-tokens", "500"]) == 0
    out = capsys.readouterr().out
    assert "| model | parameters" in out and "slm_opposites" in out and "saved " in out
    assert list((run / "evals").glob("report-*.json"))
    assert cli.main(["eval", str(run), "--tasks", "opposites", "--limit", "0"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err
    assert cli.main(["eval", str(run), "--judge", "http://127.0.0.1:9/v1", "--judge-seeds", "1,2,3"]) == 2
    assert "one seed or two" in capsys.readouterr().err
    assert cli.main(["eval", str(run), "--pairwise"]) == 2
    assert "exactly two models" in capsys.readouterr().err

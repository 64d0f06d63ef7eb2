"""The Runs tab's family tree: nodes by kind and edges by relation read from the figure, colour by a score, a
picked run opens in the run panel, compare-with-parent gives the score delta, a base with descendants is refused
until the orphaning is confirmed. Handlers on real folders (the session's tiny run and its int8), no torch here."""

import json
import shutil

import pytest

from studio import lineage_view as view


def traces(fig) -> dict:
    return {t.name: t for t in fig.data}


@pytest.fixture
def family(tmp_path, copy_of_tiny_run):
    """runs/tiny (a finished run) with its int8 beside it, a report card on each, and a fine-tune of tiny."""
    root, name = copy_of_tiny_run(tmp_path, quantize=True)
    int8 = next((root / name / "quantized").iterdir())
    for folder, ppl in ((root / name, 9.0), (int8, 9.5)):
        (folder / "evals").mkdir(exist_ok=True)
        (folder / "evals" / "report-1.json").write_text(json.dumps({"ppl_own": ppl, "ppl_common": ppl + 1}))
    tuned = root / "tuned"
    shutil.copytree(root / name, tuned, ignore=shutil.ignore_patterns("quantized", "evals", "lineage.json"))
    config = (tuned / "config.yaml").read_text().replace("mode: pretrain", "mode: finetune")
    (tuned / "config.yaml").write_text(config.replace("init_from: null", f"init_from: {name}"))
    return root, name, int8


def test_the_tree_draws_nodes_by_kind_and_edges_by_relation(family):
    root, name, int8 = family
    fig, nodes, scores = view.draw(root, None, None)
    drawn = traces(fig)
    assert {"pretrain", "quantized", "finetune", "report"} <= set(drawn)
    assert list(drawn["quantized"].customdata) == [f"{name}/quantized/{int8.name}"]
    assert sorted(drawn["relations"].text) == ["evaluated", "evaluated", "init_from", "quantized_from"]
    assert f"{name}/quantized/{int8.name}" in nodes["choices"] and "tuned" in nodes["choices"]
    assert scores["choices"] == [view.BY_KIND, "ppl", "ppl_common", "val_loss"]

    fig, _, _ = view.draw(root, "ppl", name)
    coloured = traces(fig)["pretrain"]
    assert list(coloured.marker.color) == [9.0] and fig.layout.coloraxis.reversescale  # lower ppl is better
    assert "picked" in traces(fig)


def test_picking_a_node_opens_it_and_compares_it_with_its_parent_in_one_click(family):
    root, name, int8 = family
    panel, opened, chat, export = view.pick(root, name)
    assert name in panel and opened["value"] == name  # a run: the tab's run panel opens it
    assert chat["interactive"] and export["interactive"] and "is off" not in panel
    node = f"{name}/quantized/{int8.name}"
    panel, opened, chat, export = view.pick(root, node)
    assert "quantized_from" in panel and "value" not in opened  # not a run: the run panel stays
    delta = view.compare_with_parent(root, node)
    assert "| ppl | 9 | 9.5 | +0.5 (worse) |" in delta and "ppl_common" in delta
    assert "no parent" in view.compare_with_parent(root, name)


def test_deleting_a_base_says_what_depends_on_it_and_needs_the_orphaning_confirmed(family):
    root, name, int8 = family
    box, text, orphan, note = view.ask_delete(root, name)
    assert box["visible"] and orphan["visible"] and "only base of tuned" in text
    assert f"{name}/quantized/{int8.name}" in text  # its own artifacts go with it, said so
    assert "only base of tuned" in view.confirm_delete(root, name, False) and (root / name).is_dir()
    assert "Deleted" in view.confirm_delete(root, name, True) and not (root / name).exists()
    fig, _, _ = view.draw(root, None, None)
    assert "missing" in traces(fig)  # the orphan still shows the base it came from, gone


def test_what_can_i_delete_lists_without_deleting(family):
    root, name, int8 = family
    listing = view.cleanup_listing(root)  # the finished run's older checkpoint copies; not the int8 it needs
    assert f"{name}/checkpoints/latest.prev" in listing and "quantized" not in listing
    stale = root / name / "quantized" / "int8-older"
    shutil.copytree(int8, stale, ignore=shutil.ignore_patterns("evals"))
    meta = json.loads((stale / "lineage.json").read_text())
    (stale / "lineage.json").write_text(json.dumps(dict(meta, created_at=meta["created_at"] - 60)))
    listing = view.cleanup_listing(root)
    assert f"{name}/quantized/int8-older" in listing and "superseded" in listing and stale.is_dir()


def test_a_clicked_node_is_picked_and_chat_or_export_opens_it_in_that_tab(family):
    root, name, int8 = family
    assert view.clicked(root, f"{name}\n2")["value"] == name  # the page's click count after the name
    assert "value" not in view.clicked(root, "not-a-node\n3")  # a name never shown: nothing picked

    tabs, model, tag, note = view.open_in(root, name, "chat")
    assert tabs.selected == "chat" and model["value"] == str(root / name) and tag["value"] == "best" and not note
    assert (name, str(root / name)) in model["choices"]  # the Chat picker's own entry, shown by its label
    tabs, model, tag, _ = view.open_in(root, f"{name}/quantized/{int8.name}", "export")
    assert tabs.selected == "export" and model["value"] == str(int8) and tag["value"] == "best"

    card = f"{name}/evals/report-1"
    panel, _, chat, export = view.pick(root, card)
    assert not chat["interactive"] and not export["interactive"] and "Chat with it is off: a report card" in panel
    tabs, model, _, note = view.open_in(root, card, "chat")
    assert "selected" not in tabs and "value" not in model and "report card" in note  # the page stays


def test_what_chat_and_export_take_for_each_kind_of_node(tmp_path):
    from studio.lineage_open import chat_target, export_target

    def export_folder(fmt: str, *files: str) -> dict:
        folder = tmp_path / "run" / "export" / fmt
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_bytes(b"")
        return {"kind": "export", "name": f"run/export/{fmt}", "path": str(folder), "state": None,
                "details": {"format": fmt}}

    gguf = export_folder("gguf", "tiny-f16.gguf", "Modelfile")
    assert chat_target(gguf) == (str(tmp_path / "run/export/gguf/tiny-f16.gguf"), "best")  # through transformers
    assert "already an export" in export_target(gguf, tmp_path)
    assert "no GGUF adapter" in chat_target(export_folder("gguf-lora", "a-base-f16.gguf", "a-lora-f16.gguf"))
    assert "KV cache" in chat_target(export_folder("onnx-graph", "model.onnx"))
    assert chat_target(export_folder("onnx", "genai_config.json"))[0].endswith("onnx")  # onnxruntime-genai
    hub = {"kind": "hub", "name": "HuggingFaceTB/SmolLM2-135M", "path": None, "state": None}
    assert chat_target(hub) == ("HuggingFaceTB/SmolLM2-135M", "best") and "slm export" in export_target(hub, tmp_path)
    gone = {"kind": "missing", "name": "old (gone)", "path": None, "state": None}
    assert "gone" in chat_target(gone)
    run = tmp_path / "fresh"
    run.mkdir()
    fresh = {"kind": "pretrain", "name": "fresh", "path": str(run), "state": "running"}
    assert chat_target(fresh) == export_target(fresh, tmp_path) == "the run has no checkpoint yet"

"""slm_core.infer.engine_choice without a genai export: auto stays native and says why (nothing measured or
cached), --engine native and onnx are taken as asked, and a draft keeps native. The measured choice, its cache and
every path reporting it: tests/studio/test_chat_engine.py (it builds the export once)."""

import subprocess
import sys
import time

import pytest

from slm_core.errors import SLMError
from slm_core.infer.engine_choice import CACHE_FILE, LOAD_ENV, choose, load_class
from slm_core.system import cores_used_by_others


def test_auto_without_an_export_stays_native_and_says_why(tiny_char_run, tmp_path):
    choice = choose(tiny_char_run, runs_dir=tmp_path)
    assert choice.engine == "native" and choice.folder == tiny_char_run and not choice.speeds
    assert "no onnxruntime-genai export" in choice.line() or "not installed" in choice.line()
    assert not (tmp_path / CACHE_FILE).exists()  # nothing measured, nothing cached
    assert choose(tiny_char_run, engine="native", runs_dir=tmp_path).line() == "engine: native torch (asked for)"


def test_asked_for_genai_without_an_export_and_a_draft_on_genai_are_refused(tiny_char_run, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    with pytest.raises(SLMError, match="no onnxruntime-genai export"):
        choose(tiny_char_run, engine="onnx", runs_dir=tmp_path)
    with pytest.raises(SLMError, match="draft"):
        choose(tiny_char_run, engine="onnx", runs_dir=tmp_path, draft=True)
    assert choose(tiny_char_run, runs_dir=tmp_path, draft=True).reason == "a draft model decodes on native torch only"
    with pytest.raises(SLMError, match="unknown"):
        choose(tiny_char_run, engine="fast")


def test_a_genai_folder_runs_on_genai_whatever_is_asked(tmp_path):
    (tmp_path / "genai_config.json").write_text("{}")
    assert choose(tmp_path, engine="native").engine == "onnx"


def test_the_fastest_measured_native_thread_count_is_the_one_native_decodes_on():
    from slm_core.infer.engine_choice import _decided

    busy = _decided("m", [], {"native torch, 2 threads": 3.0, "native torch, 1 thread": 19.0}, cached=True)
    assert (busy.engine, busy.threads, busy.cached) == ("native", 1, True)
    assert "native torch, 1 thread: 19; native torch, 2 threads: 3 (cached)" in busy.reason
    assert _decided("m", [], {"native torch": 5.0}).threads is None  # one candidate: the engine's own default


def test_the_load_a_choice_is_made_for_counts_other_processes_and_can_be_pinned(monkeypatch):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another program holding a core
    try:
        cores_used_by_others()  # the window starts here
        time.sleep(1.0)
        assert cores_used_by_others() > 0.2  # its share of one core, however loaded the machine is
    finally:
        busy.kill()
        busy.wait()
    for pinned in ("quiet", "busy"):
        monkeypatch.setenv(LOAD_ENV, pinned)
        assert load_class() == pinned


def test_an_export_of_an_older_checkpoint_is_stale_however_late_it_finished(tiny_char_run, tmp_path):
    import json
    import shutil

    from slm_core.infer.engine_choice import checkpoint_written, genai_exports

    run = tmp_path / "char"
    shutil.copytree(tiny_char_run, run)
    export = run / "export" / "onnx"
    export.mkdir(parents=True)
    (export / "genai_config.json").write_text("{}")  # written after the checkpoint: fresh by its age alone
    assert genai_exports(run) == [export]
    written = checkpoint_written(run)
    # a build that loaded the weights before training wrote this checkpoint, and finished after
    (export / "export.json").write_text(json.dumps({"format": "onnx", "checkpoint_written": written - 1}))
    assert genai_exports(run) == []
    (export / "export.json").write_text(json.dumps({"format": "onnx", "checkpoint_written": written}))
    assert genai_exports(run) == [export]

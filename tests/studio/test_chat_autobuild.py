"""'auto' in Chat on a run with no onnxruntime-genai export: the first reply comes from native torch with a
note that an export is being built in the background; once built (cached under the run's export/), the
next reply comes from onnxruntime-genai, with the same greedy text."""

import pytest

from studio import chat_session
from studio.chat_session import ChatSession

GREEDY = dict(max_new_tokens=12, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None)


@pytest.mark.slow  # the builder runs once (~30 s on 2 loaded cores)
@pytest.mark.timeout(400)
def test_auto_builds_the_genai_export_once_and_switches_to_it(copy_of_tiny_run, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    runs_dir, name = copy_of_tiny_run(tmp_path)
    session = ChatSession(runs_dir, auto_build=True)
    first: dict = {}
    native = "".join(session.stream("Once upon a time", [], name, "best", GREEDY, first))
    assert "native torch" in first["engine"] and "building an onnxruntime-genai export" in first["engine_note"]
    chat_session._BUILDS.wait()
    assert (runs_dir / name / "export" / "onnx" / "genai_config.json").exists()
    second: dict = {}
    genai = "".join(session.stream("Once upon a time", [], name, "best", GREEDY, second))
    assert "onnxruntime-genai" in second["engine"] and not second["engine_note"]
    assert genai == native
    # A plain ChatSession (tests, Compare) never starts a build behind the user's back.
    assert ChatSession(runs_dir).auto_build is False

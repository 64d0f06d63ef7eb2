"""Engine choice 'auto' on a run with no onnxruntime-genai export (slm_core.infer.engine_choice and genai_build):
`slm serve` and the Chat tab decode on native torch and say an export is being built in the background (one build,
a process of its own); once it exists auto times both engines once (cached), the server switches where genai won
and /health and /metrics say which engine answers, Chat's next reply comes from the winner with the same greedy
text, and `slm generate` reads the cached choice (`--engine native` still overrides); when the machine turns busy the
server chooses again for that load (measured once more, cached beside the quiet answer). `slm generate` on a run with
no export starts the build after its reply, for next time."""

import json
import os
import signal
import time

import pytest

from slm_core.cli import main
from slm_core.infer import genai_build, serve
from slm_core.infer.engine_choice import CACHE_FILE, LOAD_ENV, checkpoint_identity, genai_exports
from slm_core.infer.openmp import CORES
from slm_core.infer.serve import create_app, load_served
from studio.chat_session import ChatSession, pick_backend
from studio.compare_session import PairSession

GREEDY = dict(max_new_tokens=12, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None)
PROMPT = "Once upon a time"


@pytest.mark.slow  # the builder runs once (~15 s on 2 cores)
@pytest.mark.timeout(400)
def test_auto_builds_the_export_in_the_background_times_it_once_and_every_path_says_which_engine(
        copy_of_tiny_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime_genai")
    from fastapi.testclient import TestClient

    monkeypatch.setenv(genai_build.ENV, "1")  # tests/conftest.py turns background builds off for the suite
    monkeypatch.setattr(serve, "LOAD_CHECK_S", 0.2)  # the server looks at the load (pinned by LOAD_ENV) often
    runs_dir, name = copy_of_tiny_run(tmp_path)
    path = runs_dir / name
    served = load_served(name, runs_dir=runs_dir, build=True)  # as `slm serve` loads it
    try:
        assert "native torch" in served.engine.description
        assert "building one in the background" in capsys.readouterr().out and "building" in served.choice
        session = ChatSession(runs_dir, auto_build=True)
        first: dict = {}
        native = "".join(session.stream(PROMPT, [], name, "best", GREEDY, first))
        assert "native torch" in first["engine"] and "building an onnxruntime-genai export" in first["engine_note"]

        assert genai_build.wait(path, checkpoint_identity(path, "best")) == "done"  # one build, for both
        assert genai_exports(path)
        assert served.switched.wait(120)  # the server timed both engines
        (entry,) = json.loads((runs_dir / CACHE_FILE).read_text()).values()
        genai_labels = {f"onnxruntime-genai fp32, {n} thread{'s' if n > 1 else ''}" for n in {1, CORES}} \
            if CORES > 1 else {"onnxruntime-genai fp32"}  # genai timed on one thread and on every core
        assert set(entry["speeds"]) == {"native torch"} | genai_labels and entry["load"] == "quiet"
        fastest = max(entry["speeds"], key=entry["speeds"].get)
        winner = "onnxruntime-genai" if fastest in genai_labels else "native torch"
        assert winner in served.engine.description and "auto: the fastest here, measured" in served.choice
        client = TestClient(create_app(served))
        health = client.get("/health").json()
        assert winner in health["engine"] and "measured" in health["engine_choice"]
        assert f'slm_engine_info{{engine="{served.engine.description}"}} 1' in client.get("/metrics").text
        reply = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        assert reply.json()["choices"][0]["text"] == native

        written = (runs_dir / CACHE_FILE).stat().st_mtime_ns
        second: dict = {}
        assert "".join(session.stream(PROMPT, [], name, "best", GREEDY, second)) == native
        assert winner in second["engine"] and "(cached)" in second["engine_choice"] and not second["engine_note"]
        assert "measured" in session.describe()
        compare = PairSession(runs_dir)
        compare.load((name, name))
        assert compare.sides[0].engine is session.engine and compare.sides[1].choice.cached  # the same choice
        forced = ChatSession(runs_dir, backend="native")
        assert "".join(forced.stream(PROMPT, [], name, "best", GREEDY, second)) == native
        assert "native torch" in second["engine"] and second["engine_choice"] == "asked for"

        capsys.readouterr()
        assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "4", "--temperature", "0"]) == 0
        said = capsys.readouterr().err
        assert f"[engine: {winner} (auto: the fastest here" in said and "(cached)" in said and "building" not in said
        assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "4", "--engine", "native"]) == 0
        assert "[engine: native torch (asked for)]" in capsys.readouterr().err
        assert (runs_dir / CACHE_FILE).stat().st_mtime_ns == written  # measured once for every path
        assert pick_backend(path, "best", "onnx")[0] == "onnx"  # and there when asked for

        monkeypatch.setenv(LOAD_ENV, "busy")  # as if a training run took the cores: the server chooses again
        deadline = time.monotonic() + 120
        while served.load != "busy" and time.monotonic() < deadline:
            time.sleep(0.1)
        cache = json.loads((runs_dir / CACHE_FILE).read_text())
        assert sorted(entry["load"] for entry in cache.values()) == ["busy", "quiet"]
        assert "measured" in served.choice and "on a busy machine" in served.choice
        reply = TestClient(create_app(served)).post("/v1/completions",
                                                    json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
        assert reply.json()["choices"][0]["text"] == native  # whichever engine the busy answer named
    finally:
        served.engine.close()


def test_slm_generate_starts_the_build_after_its_reply_for_next_time(copy_of_tiny_run, tmp_path, monkeypatch,
                                                                      capsys):
    pytest.importorskip("onnxruntime_genai")
    monkeypatch.setenv(genai_build.ENV, "1")
    runs_dir, name = copy_of_tiny_run(tmp_path)
    path = runs_dir / name
    assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    said = capsys.readouterr().err
    assert "[engine: native torch (no onnxruntime-genai export of this checkpoint yet" in said
    assert "building an onnxruntime-genai export of this model in the background for next time" in said
    build = genai_build._CHILDREN[str(path)]
    try:
        assert genai_build.status(path, checkpoint_identity(path, "best")) == "building"
        assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "2"]) == 0
        again = capsys.readouterr().err  # the next run sees the build under way, and starts no second one
        assert "building one in the background" in again and "for next time" not in again
    finally:
        os.killpg(build.pid, signal.SIGTERM)  # its own session: the wrapper and the export under it
        build.wait(30)
    assert genai_build.status(path, checkpoint_identity(path, "best")).startswith("failed")
    # Off: no build, and the reason says how to make one
    monkeypatch.setenv(genai_build.ENV, "0")
    assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "2"]) == 0
    assert f"{genai_build.ENV}=0" in capsys.readouterr().err


def test_a_failed_background_build_is_said_under_one_reply_not_every_one(copy_of_tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime_genai")
    monkeypatch.setenv(genai_build.ENV, "1")
    runs_dir, name = copy_of_tiny_run(tmp_path)
    path = runs_dir / name
    genai_build._write(path, {"checkpoint": checkpoint_identity(path, "best"), "state": "failed: the builder crashed"})
    session = ChatSession(runs_dir, auto_build=True)
    notes = []
    for _ in range(2):
        stats: dict = {}
        "".join(session.stream(PROMPT, [], name, "best", GREEDY, stats))
        notes.append(stats["engine_note"])
    assert "failed: the builder crashed" in notes[0] and notes[1] is None

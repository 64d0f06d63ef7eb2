"""Chat and Compare over the shared engine: two chats at once both stream, the tabs share one engine per
model, the fastest backend is picked (and can be overridden), threads shrink while a run trains, and
every reply shows its first-token latency and tokens/s."""

import json
import os
import threading

import pytest

from studio.chat_session import ChatSession, pick_backend, thread_budget
from studio.compare_session import PairSession
from studio.tabs.chat import reply

SETTINGS = dict(max_new_tokens=30, temperature=0.8, top_k=50, top_p=1.0, repetition_penalty=1.0, seed=5)


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    return copy_of_tiny_run(tmp_path_factory.mktemp("chat-engine-runs"))


@pytest.mark.timeout(180)
def test_two_chats_at_once_both_stream_from_one_shared_engine(run):
    runs_dir, name = run
    chat, compare = ChatSession(runs_dir, backend="native"), PairSession(runs_dir)
    first, second, third = ({}, {}, {})
    # Two browser tabs on the Chat tab share one session: the second reply starts while the first is
    # still being read (a lock held for a whole reply would block here forever).
    a = chat.stream("Once upon a time", [], name, "best", SETTINGS, first)
    b = chat.stream("Once upon a time", [], name, "best", SETTINGS, second)
    pieces_a, pieces_b = [next(a)], [next(b)]
    pieces_a += list(a)
    pieces_b += list(b)
    assert "".join(pieces_a) == "".join(pieces_b)  # same seed, same engine, same answer
    list(compare.sides[0].stream("Once", [], name, "best", SETTINGS, third, "native"))
    assert chat.engine is compare.sides[0].engine  # Chat and Compare share the model's engine
    assert first["ttft_s"] > 0 and first["tokens_per_sec"] > 0 and "native torch" in first["engine"]


def test_every_reply_line_shows_first_token_latency_speed_and_engine(run):
    runs_dir, name = run
    updates = list(reply(ChatSession(runs_dir), threading.Event(), "The little dog", [], name, "best",
                         0.8, 50, 1.0, 1.1, 8, "3", "native"))
    line = updates[-1][2]
    assert "first token" in line and "ms" in line and "tokens/s" in line and "native torch" in line


def test_threads_drop_to_one_while_a_run_trains(run, tmp_path):
    runs_dir, name = run
    assert thread_budget(runs_dir) is None
    busy = tmp_path / "training"
    busy.mkdir()
    (busy / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    assert thread_budget(tmp_path) == 1
    session = ChatSession(tmp_path, backend="native")
    session.ensure(str(runs_dir / name))
    assert session.engine.threads == 1 and "1 thread" in session.describe()


@pytest.mark.slow  # builds an onnxruntime-genai export (~30 s)
def test_auto_measures_native_against_a_fresh_genai_export_once_and_every_path_says_which_it_used(run, capsys):
    """slm_core.infer.engine_choice through Chat, Compare, `slm generate` and `slm serve`: one measurement, cached
    under the runs folder and reused; native can be forced."""
    pytest.importorskip("onnxruntime_genai")
    from slm_core.cli import main
    from slm_core.infer.engine_choice import CACHE_FILE, LABELS
    from slm_core.infer.serve import load_served
    from studio import jobs
    from studio.chat_session import choose_engine

    runs_dir, name = run
    path = runs_dir / name
    assert pick_backend(path, "best", "auto") == ("native", path)  # no export yet: nothing to measure
    assert not (runs_dir / CACHE_FILE).exists()
    jobs.export(str(path), fmt="onnx")
    kind, where = pick_backend(path, "best", "auto")  # times both once
    (entry,) = json.loads((runs_dir / CACHE_FILE).read_text()).values()
    assert set(entry["speeds"]) == {"native torch", "onnxruntime-genai fp32"} and entry["dtype"] == "auto"
    if kind == "onnx":
        assert (where / "genai_config.json").exists()
    written = (runs_dir / CACHE_FILE).stat().st_mtime_ns
    choice = choose_engine(path, "best", "auto")
    assert choice.cached and choice.engine == kind and "measured" in choice.reason

    session = ChatSession(runs_dir)
    stats: dict = {}
    assert "".join(session.stream("Once", [], name, "best", dict(SETTINGS, temperature=0), stats))
    assert LABELS[kind] in stats["engine"] and "cached" in stats["engine_choice"] and "measured" in session.describe()
    compare = PairSession(runs_dir)
    compare.load((name, name))
    assert compare.sides[0].engine is session.engine and compare.sides[1].choice.cached  # Compare: the same choice
    forced = ChatSession(runs_dir, backend="native")
    assert "".join(forced.stream("Once", [], name, "best", dict(SETTINGS, temperature=0), stats))
    assert "native torch" in stats["engine"] and stats["engine_choice"] == "asked for"

    assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert f"[engine: {LABELS[kind]} (auto: the fastest here" in capsys.readouterr().err
    assert main(["generate", name, "--runs-dir", str(runs_dir), "--max-new-tokens", "4", "--engine", "native"]) == 0
    assert "[engine: native torch (asked for)]" in capsys.readouterr().err
    served = load_served(name, runs_dir=runs_dir)
    try:
        assert LABELS[kind] in served.engine.description and "cached" in capsys.readouterr().out
    finally:
        served.engine.close()
    assert (runs_dir / CACHE_FILE).stat().st_mtime_ns == written  # measured once for all of them
    assert pick_backend(path, "best", "onnx")[0] == "onnx"  # still there when asked for

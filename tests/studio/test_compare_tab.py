"""The Compare tab: one prompt to two real models, both answers streaming at once with honest tokens/s;
and the issue's whole story through a launched Studio: quantize a run, then compare it with its int8."""

import copy
import shutil
import socket
import threading

import pytest

from studio import chat_session
from studio.compare_session import PairSession
from studio.style import mark
from studio.tabs.compare import compare_reply

SETTINGS = dict(max_new_tokens=10, temperature=0.8, top_k=50, top_p=1.0, repetition_penalty=1.0, seed=7)
SAMPLING = (0.8, 50, 1.0, 1.0, 10, "7")  # the tab's sliders: temperature, top-k, top-p, penalty, tokens, seed


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    """(runs_dir, name) of a copy of the session's tiny run with an int8 version beside it."""
    return copy_of_tiny_run(tmp_path_factory.mktemp("compare-runs"), quantize=True)


def test_the_same_model_on_both_sides_with_one_seed_gives_the_same_answer(run):
    runs_dir, name = run
    pair, stats = PairSession(runs_dir), ({}, {})
    pieces = list(pair.stream("Once upon a time", ([], []), (name, str(runs_dir / name)), SETTINGS, stats))
    texts = ["".join(d for side, d in pieces if side == s) for s in (0, 1)]
    assert texts[0] and texts[0] == texts[1]
    assert [side for side, _ in pieces[:4]] == [0, 1, 0, 1]  # stepped in turn: both grow at once
    for s in stats:  # each side timed on its own generator only
        assert s["done"] and 1 <= s["tokens"] <= 10 and s["tokens_per_sec"] > 0 and s["seconds"] > 0


def test_the_handler_streams_an_original_and_its_int8_side_by_side(run, monkeypatch):
    runs_dir, name = run
    monkeypatch.setattr(chat_session, "PAGE_UPDATE_S", 0)  # an update per token: the interleaving, not the pace
    updates = [copy.deepcopy(u) for u in compare_reply(  # as Gradio sends them: each update when it is yielded
        PairSession(runs_dir), threading.Event(), "The little dog", [], [], str(runs_dir / name),
        str(runs_dir / name / "quantized" / "int8"), *SAMPLING)]
    first_a, first_b, box, info_a, _ = updates[0]
    assert first_a[-1] == {"role": "assistant", "content": ""} and box == "" and "loading" in info_a
    history_a, history_b, _, info_a, info_b = updates[-1]
    for history in (history_a, history_b):
        assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"]
    assert "tokens/s" in info_a and "done" in info_a and "tokens/s" in info_b
    assert "Loaded" in info_a and "quantized" in info_b  # which model answered
    # Both columns change while the answers stream, not one after the other.
    both = [u for u in updates[1:-1] if u[0][-1]["content"] and u[1][-1]["content"]]
    assert both and any(u[0][-1]["content"] != history_a[-1]["content"] for u in both)


def test_stop_ends_both_streams_and_frees_the_models(run):
    runs_dir, name = run
    pair, stats = PairSession(runs_dir), ({}, {})
    calls = []
    pieces = list(pair.stream("Once", ([], []), (name, name), dict(SETTINGS, max_new_tokens=50), stats,
                              should_stop=lambda: calls.append(1) or len(calls) > 1))
    assert 1 <= len(pieces) <= 2 and not stats[0]["done"]
    assert not any(session.lock.locked() for session in pair.sides)  # the next prompt is not blocked


def test_missing_models_are_messages(run, tmp_path):
    runs_dir, name = run
    *_, info_a, info_b = list(compare_reply(PairSession(runs_dir), threading.Event(), "Hi", [], [], name, None,
                                            *SAMPLING))[-1]
    assert "Pick a model on each side" in info_a == info_b
    history_a, _, box, info_a, _ = list(compare_reply(PairSession(runs_dir), threading.Event(), "Hi", [], [], name,
                                                      str(tmp_path / "gone"), *SAMPLING))[-1]
    assert history_a == [] and box == "Hi" and info_a.startswith(mark("error")) and "gone" in info_a


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_through_a_launched_studio_quantize_then_compare_with_the_original(run, tmp_path):
    from gradio_client import Client

    from studio.app import TAB_MODULES, build_app, launch

    runs_dir, name = run
    shutil.rmtree(runs_dir / name / "quantized")
    demo = build_app(runs_dir, tabs=[*TAB_MODULES[3:5], "studio.tabs.compare", "studio.tabs.quantize"])
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        text, report, *_ = client.predict(name, "best", "int4", 32, True, 1000, api_name="/quantize")
        assert text.startswith(mark("ok")) and [row[0] for row in report["data"]] == ["original (fp32)", "int4-g32"]
        job = client.submit("Once upon a time", [], [], str(runs_dir / name), str(runs_dir / name / "quantized" /
                            "int4-g32"), *SAMPLING, api_name="/compare")
        history_a, history_b, _, info_a, info_b = job.result()
        assert len(job.outputs()) >= 3  # streamed: several updates came over the connection
        assert history_a[-1]["content"] and history_b[-1]["content"]
        assert "tokens/s" in info_a and "tokens/s" in info_b
    finally:
        demo.close()

"""Chat and Compare over the shared engine: two chats at once both stream, the tabs share one engine per
model, threads shrink while a run trains, and every reply shows its first-token latency and tokens/s. The measured
engine choice through every path (and its override): tests/studio/test_chat_autobuild.py."""

import json
import os
import threading

import pytest

from studio.chat_session import ChatSession, thread_budget
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

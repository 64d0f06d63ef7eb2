"""The Chat tab's model holder: prompts per mode, streaming from a real checkpoint, reload on a new one."""

import os

import gradio as gr

from slm_core.models.templates import format_prompt
from studio.chat_session import ChatSession, build_prompt
from studio.tabs.chat import reply


def test_base_models_complete_the_text_and_tuned_models_get_the_conversation_in_their_template():
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},  # Gradio 6 hands parts lists
               {"role": "assistant", "content": "Hello!"}]
    assert build_prompt("Once upon a time", history, None) == "Once upon a time"
    expected = format_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "Tell a story"}], "alpaca")
    assert build_prompt("Tell a story", history, "alpaca") == expected
    assert expected.endswith("### Response:\n")


def test_streams_a_reply_from_a_run_and_reloads_when_its_checkpoint_changes(tiny_run):
    root, name = tiny_run
    session = ChatSession(root)
    stats: dict = {}
    settings = dict(max_new_tokens=12, temperature=0.8, top_k=50, top_p=1.0, repetition_penalty=1.0, seed=1)
    deltas = list(session.stream("Once upon a time", [], name, "best", settings, stats))
    assert deltas and stats["tokens"] >= 1 and stats["tokens_per_sec"] > 0 and stats["reloaded"]
    again = list(session.stream("Once upon a time", [], name, "best", settings, stats))
    # Same seed, same engine: the same text (piece boundaries follow the reader's pace, not the model).
    assert "".join(again) == "".join(deltas) and not stats["reloaded"]
    assert "completion mode" in session.describe() and "step 6" in session.describe()
    state = root / name / "checkpoints" / "best" / "state.json"
    newer = state.stat().st_mtime_ns + 1_000_000_000
    os.utime(state, ns=(newer, newer))  # training wrote a newer best (a second after the one loaded)
    list(session.stream("Once", [], name, "best", settings, stats))
    assert stats["reloaded"]


def test_the_chat_handler_streams_into_the_conversation_and_reports_speed(tiny_run):
    import threading

    root, name = tiny_run
    updates = list(reply(ChatSession(root), threading.Event(), "The little dog", [], name, "latest",
                         0.8, 50, 1.0, 1.1, 8, "3"))
    history, box, stats, _ = updates[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "The little dog"
    # The first update empties the box; later ones leave it alone (a message typed meanwhile is kept).
    assert history[1]["content"] and updates[0][1] == "" and box == gr.skip()
    assert "tokens/s" in stats
    assert len(updates) >= 3  # a first update before any token, then one per piece of text
    _, _, error, _ = list(reply(ChatSession(root), threading.Event(), "Hi", [], None, "best",
                                0.8, 50, 1.0, 1.1, 8, ""))[-1]
    assert "Pick a model" in error

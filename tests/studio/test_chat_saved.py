"""The Chat tab's saved conversations, edit and regenerate, context meter and Draft picker, through the tab's real
handlers (studio.tabs.chat.reply with a studio.chat_saved.ChatLog) on the session's tiny model."""

import threading

import pytest

from slm_core.errors import SLMError
from slm_core.infer.sampling import SamplingParams
from slm_core.run.conversations import ConversationStore
from studio import chat_saved
from studio.chat_session import ChatSession, draft_choices, fit_context
from studio.tabs.chat import reply

GREEDY = (0.0, 0, 1.0, 1.0, 10, "1")  # temperature, top-k, top-p, repetition penalty, max new tokens, seed


@pytest.fixture(scope="module")
def runs(copy_of_tiny_run, tmp_path_factory):
    """A runs folder with the tiny run, a copy of it as a draft (the same tokenizer, by its lineage), and a copy
    whose config says `slm shrink` made it from the tiny run (what `slm shrink` writes: distill.teacher and
    distill.shrink_layers)."""
    import shutil

    import yaml

    root, name = copy_of_tiny_run(tmp_path_factory.mktemp("chat-saved"))
    shutil.copytree(root / name, root / "tiny-draft")
    shutil.copytree(root / name, root / "tiny-shrunk")
    config = yaml.safe_load((root / "tiny-shrunk" / "config.yaml").read_text())
    config["distill"].update(teacher=str(root / name), shrink_layers=1)
    (root / "tiny-shrunk" / "config.yaml").write_text(yaml.safe_dump(config))
    return root, name


def _say(session, store, text, name, conversation_id=None, history=(), draft="", log=None, policy="drop"):
    log = log or chat_saved.ChatLog.resume(store, conversation_id, list(history))
    *_, (chat, _, stats, _) = list(reply(session, threading.Event(), text, list(history), name, "best", *GREEDY,
                                         "native", "", draft, policy, log=log))
    return chat, stats, log.conversation.id


def test_conversations_survive_a_restart_and_edits_keep_the_earlier_branch(runs):
    root, name = runs
    session, store = ChatSession(root), ConversationStore(root)
    chat, stats, conversation_id = _say(session, store, "The little dog", name)
    chat, _, same = _say(session, store, "The cat", name, conversation_id, chat)
    assert same == conversation_id and [m["role"] for m in chat] == ["user", "assistant"] * 2
    assert "context: **" in stats and " / 64 tokens" in stats  # the meter: the tiny model's context is 64

    # A restarted Studio: a new session and store on the same folder list and reopen it.
    store = ConversationStore(root)
    assert [v for _, v in chat_saved.list_choices(store)] == [conversation_id]
    assert chat_saved.list_choices(store)[0][0].startswith("The little dog · tiny · ")
    assert chat_saved.display(store.load(conversation_id)) == chat

    # Edit the second message and answer it again: the earlier branch stays, one click away.
    log, before, text = chat_saved.branch_log(store, conversation_id, 2, chat[:2] + [{"role": "user",
                                              "content": "The bird"}], edited=True)
    assert text == "The bird" and before == chat[:2]
    edited, _, _ = _say(ChatSession(root), store, text, name, history=before, log=log)
    assert [m["content"] for m in edited[:3]] == ["The little dog", chat[1]["content"], "The bird"]
    assert "version 2 of 2" in chat_saved.alternatives_text(store.load(conversation_id), 2)
    shown = chat_saved.switch(store, conversation_id, 2, -1)
    assert chat_saved.display(shown) == chat  # the earlier branch, its answer included

    # Regenerate the last answer: an alternative beside the first, switchable.
    log, before, text = chat_saved.branch_log(store, conversation_id, 3, chat, edited=False)
    assert text == "The cat" and len(before) == 2
    _say(session, store, text, name, history=before, log=log)
    conversation = store.load(conversation_id)
    assert len(conversation.siblings(conversation.path()[3]["id"])) == 2
    markdown, jsonl = chat_saved.exports(store, conversation_id)
    assert markdown.endswith(".md") and jsonl.endswith(".jsonl")


def test_a_failed_first_reply_leaves_no_conversation_behind(runs, tmp_path):
    root, _ = runs
    store = ConversationStore(tmp_path)
    log = chat_saved.ChatLog.resume(store, None, [])
    *_, (chat, box, error, _) = list(reply(ChatSession(root), threading.Event(), "Hi", [], str(tmp_path / "gone"),
                                           "best", *GREEDY, log=log))
    assert chat == [] and box == "Hi" and "gone" in error and store.list() == []


def test_a_picked_draft_gives_the_same_greedy_text_and_reports_its_acceptance(runs):
    root, name = runs
    offered = draft_choices(root, name)
    assert offered[0] == ("none", "") and str(root / "tiny-draft") in [v for _, v in offered]
    assert offered[1][0].startswith("tiny-shrunk (shrunk from this model: 1 layer)")  # the student first
    assert len(offered) == 3  # not the model itself
    session, store = ChatSession(root), ConversationStore(root)
    alone, alone_stats, _ = _say(session, store, "Once upon a time", name)
    drafted, stats, _ = _say(session, store, "Once upon a time", name, draft=str(root / "tiny-draft"))
    assert drafted[-1]["content"] == alone[-1]["content"]
    assert "draft acceptance **100%**" in stats and "draft acceptance" not in alone_stats
    assert "speculative with a" in session.engine.description


def test_a_full_context_drops_the_oldest_turns_or_stops(runs):
    root, name = runs
    session = ChatSession(root)
    engine, _ = session.ensure(name, "best", "native")
    params = SamplingParams(max_new_tokens=8)
    history = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d"}] * 2
    # In this tiny vocabulary the Alpaca template costs ~30 tokens a turn: 2 turns and the message overflow 64.
    ids, _, _, dropped = fit_context(engine, "alpaca", "Hi", history, None, params, "drop")
    assert dropped == 2 and len(ids) + 8 <= engine.context_length
    with pytest.raises(SLMError, match="fills the model's context"):
        fit_context(engine, "alpaca", "Hi", history, None, params, "stop")
    assert fit_context(engine, "alpaca", "Hi", [], None, params, "stop")[3] == 0

"""Saved conversations (slm_core.run.conversations): a tree that keeps edited and regenerated branches, the list
(newest first, search, damaged files), rename, delete, and exports the instruction-data reader accepts."""

import json

from slm_core.config import DataConfig
from slm_core.data.cache import examples_of, resolve_template
from slm_core.data.sources import read_documents
from slm_core.run.conversations import ConversationStore


def _chat(store, first="What is a dog?", answer="A small animal."):
    conversation = store.new(model="tiny", tag="best", settings={"temperature": 0}, system="Be brief.")
    user = conversation.add(None, "user", first)
    conversation.add(user, "assistant", answer)
    store.save(conversation)
    return conversation


def test_edits_and_regenerations_keep_every_branch(tmp_path):
    store = ConversationStore(tmp_path)
    conversation = _chat(store)
    first_user, first_answer = (n["id"] for n in conversation.path())
    again = conversation.add(first_user, "assistant", "A loyal friend.")  # regenerate the answer
    assert conversation.siblings(again) == [first_answer, again]
    edited = conversation.add(None, "user", "What is a cat?")  # edit the first message
    conversation.add(edited, "assistant", "A proud animal.")
    store.save(conversation)
    reopened = ConversationStore(tmp_path).load(conversation.id)  # a fresh store on the same folder
    assert [m["content"] for m in reopened.messages()] == ["What is a cat?", "A proud animal."]
    reopened.switch(first_answer)  # back to the earlier branch, its first answer
    assert [m["content"] for m in reopened.messages()] == ["What is a dog?", "A small animal."]
    assert reopened.title == "What is a dog?"  # named by the first message; an edit does not rename it
    assert len(reopened.training_records(every_branch=True)) == 3


def test_list_search_rename_delete_and_a_damaged_file(tmp_path):
    store = ConversationStore(tmp_path)
    older = _chat(store, "Tell me about rivers", "Rivers flow.")
    newer = _chat(store, "Tell me about stars", "Stars shine at night.")
    assert [r["id"] for r in store.list()] == [newer.id, older.id]
    assert [r["id"] for r in store.list("NIGHT")] == [newer.id]  # the text, not only the title
    store.rename(older.id, "Rivers")
    assert [r["title"] for r in store.list("rivers")] == ["Rivers"]
    (store.folder / "20260101-000000-bad.json").write_text("{not json")
    rows = store.list()
    damaged = [r for r in rows if r["damaged"]]
    assert len(rows) == 3 and len(damaged) == 1 and damaged[0]["title"].startswith("damaged:")
    assert len(store.list()) == 3  # moved aside, still listed
    store.delete(damaged[0]["id"])
    store.delete(newer.id)
    assert [r["id"] for r in store.list()] == [older.id]
    for bad in ("../x", "a/b", ""):
        try:
            store.file(bad)
        except Exception as error:
            assert "not a conversation id" in str(error)
        else:
            raise AssertionError(bad)


def test_exported_jsonl_is_instruction_data_and_markdown_reads_well(tmp_path):
    store = ConversationStore(tmp_path / "runs")
    conversation = _chat(store)
    conversation.add(conversation.current, "user", "And a cat?")  # unanswered: left out of the training record
    store.save(conversation)
    path = store.export(conversation.id, "jsonl", tmp_path / "out")
    record = json.loads(path.read_text())
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    docs = read_documents(DataConfig(source=str(path), template="chatml"))
    assert docs.is_instruction
    (prompt, response), = examples_of(docs, resolve_template(docs, DataConfig(source=str(path), template="chatml")))
    assert "What is a dog?" in prompt and "Be brief." in prompt and response == "A small animal."
    markdown = store.export(conversation.id, "markdown", tmp_path / "out").read_text()
    assert markdown.startswith("# What is a dog?") and "## Assistant\n\nA small animal." in markdown

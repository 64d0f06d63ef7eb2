"""The Chat tab's saved conversations (slm_core.run.conversations): the log a reply writes as it goes, the page's
view of a conversation (its shown branch, the alternatives of a message), and the list, search, rename, delete and
export handlers. No torch, no Gradio components here: studio.tabs.chat wires them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.models.templates import content_text
from slm_core.run.conversations import Conversation, ConversationStore

STOPPED = "\n\n_(stopped)_"  # ends a reply that Stop cut short; not part of what the model is shown next turn
EXPORTS = Path(tempfile.gettempdir()) / "slm-studio-exports"  # where Gradio may serve a download from
KEPT_STATS = ("tokens", "tokens_per_sec", "ttft_s", "engine", "draft_accept_rate", "speedup")


def display(conversation: Optional[Conversation]) -> list[dict]:
    """The shown branch as the Chatbot's messages (a cut-short answer ends '(stopped)')."""
    if conversation is None:
        return []
    return [{"role": n["role"], "content": n["content"] + (STOPPED if n.get("stopped") else "")}
            for n in conversation.path()]


class ChatLog:
    """Where the next reply goes in a saved conversation: a new user message under `parent`, or (a regenerated
    answer) a new answer to the existing user message `user_id`. Saves after each message."""

    def __init__(self, store: ConversationStore, conversation: Conversation, parent: Optional[str] = None,
                 user_id: Optional[str] = None):
        self.store, self.conversation, self.parent, self.user_id = store, conversation, parent, user_id

    @classmethod
    def resume(cls, store: ConversationStore, conversation_id: Optional[str], history: list) -> "ChatLog":
        """Continue the conversation at the end of its shown branch; a new one when there is none (seeded with
        `history`, e.g. an API client's own, so what the model saw is what is saved)."""
        conversation = open_or_none(store, conversation_id)
        if conversation is None or len(conversation.path()) != len(history):  # none, or cleared in the page
            conversation = store.new()
            for turn in history:
                if turn.get("role") in ("user", "assistant"):
                    conversation.add(conversation.current, turn["role"], content_text(turn.get("content"))
                                     .removesuffix(STOPPED))
        return cls(store, conversation, parent=conversation.current)

    def user(self, text: str, source: str, tag: str, settings: dict, system: str) -> None:
        conversation = self.conversation
        conversation.model, conversation.tag, conversation.settings, conversation.system = source, tag, settings, system
        if self.user_id is None:
            self.user_id = conversation.add(self.parent, "user", text)
        else:
            conversation.current = self.user_id
        self.store.save(conversation)

    def forget_user(self) -> None:
        """Take back the message `user` added when its reply failed (the page shows the conversation without it)."""
        node = self.conversation.nodes.get(self.user_id)
        if node is not None and not self.conversation.children(self.user_id) and self.parent == node.get("parent"):
            del self.conversation.nodes[self.user_id]
            self.conversation.current, self.user_id = self.parent, None
            if self.conversation.nodes:
                self.store.save(self.conversation)
            else:  # it held only that message: no empty conversation is left in the list
                self.store.delete(self.conversation.id)

    def answer(self, text: str, stats: dict, stopped: bool) -> None:
        kept = {k: stats[k] for k in KEPT_STATS if stats.get(k) is not None}
        self.conversation.add(self.user_id, "assistant", text, stats=kept, **({"stopped": True} if stopped else {}))
        self.store.save(self.conversation)


def open_or_none(store: ConversationStore, conversation_id: Optional[str]) -> Optional[Conversation]:
    if not conversation_id:
        return None
    try:
        return store.load(conversation_id)
    except SLMError:
        return None


def branch_log(store: ConversationStore, conversation_id: Optional[str], index: int, history: list,
               edited: bool) -> tuple[ChatLog, list, str]:
    """For an edited user message (`edited`) or a regenerated answer at Chatbot `index`: the log placed there, the
    conversation before that message, and the user text to answer. The earlier branch stays in the tree."""
    conversation = open_or_none(store, conversation_id)
    path = conversation.path() if conversation else []
    if not path:
        raise SLMError("this conversation is not saved yet: send a message first")
    index = min(max(int(index), 0), len(path) - 1)
    if not edited:  # retry: the user message at or before the index (Gradio names the user message's index)
        while index > 0 and path[index]["role"] != "user":
            index -= 1
    node = path[index]
    if node["role"] != "user":
        raise SLMError("only your own messages can be edited or answered again")
    before = display(conversation)[:index]
    if edited:
        text = content_text(history[index].get("content")) if index < len(history) else node["content"]
        return ChatLog(store, conversation, parent=node.get("parent")), before, text
    return ChatLog(store, conversation, user_id=node["id"]), before, node["content"]


# ---- alternatives -------------------------------------------------------------------------------------

def focus_of(conversation: Optional[Conversation], index: Optional[int]) -> Optional[int]:
    """The Chatbot index whose alternatives the switcher shows: the picked message, else the last answer."""
    path = conversation.path() if conversation else []
    if index is not None and 0 <= index < len(path):
        return index
    answers = [i for i, n in enumerate(path) if n["role"] == "assistant"]
    return answers[-1] if answers else (len(path) - 1 if path else None)


def alternatives_text(conversation: Optional[Conversation], index: Optional[int]) -> str:
    index = focus_of(conversation, index)
    if index is None:
        return ""
    node = conversation.path()[index]
    siblings = conversation.siblings(node["id"])
    what = "answer" if node["role"] == "assistant" else "message"
    text = f"{what.capitalize()} {index + 1}: version {siblings.index(node['id']) + 1} of {len(siblings)}"
    stats = node.get("stats") or {}
    if stats.get("tokens_per_sec"):
        text += f" · {stats['tokens_per_sec']:.1f} tokens/s"
    return text + ("" if len(siblings) > 1 else " (regenerate or edit to make another; click a message to pick it)")


def switch(store: ConversationStore, conversation_id: Optional[str], index: Optional[int], step: int
           ) -> Optional[Conversation]:
    """Show the previous (step -1) or next (+1) version of the message at `index` (default: the last answer)."""
    conversation = open_or_none(store, conversation_id)
    index = focus_of(conversation, index)
    if index is None:
        return conversation
    node = conversation.path()[index]
    siblings = conversation.siblings(node["id"])
    conversation.switch(siblings[(siblings.index(node["id"]) + step) % len(siblings)])
    store.save(conversation)
    return conversation


# ---- the list and its actions -------------------------------------------------------------------------

def list_choices(store: ConversationStore, query: str = "") -> list[tuple[str, str]]:
    """(label, id) of each conversation, newest first: 'title · model · date' (damaged files say so)."""
    import time

    choices = []
    for row in store.list(query or ""):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["updated"])) if row["updated"] else ""
        model = Path(row["model"]).name if row["model"] else ""
        label = row["title"] if row["damaged"] else " · ".join(p for p in (row["title"], model, when) if p)
        choices.append((label, row["id"]))
    return choices


def exports(store: ConversationStore, conversation_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(Markdown file, JSONL file) of the conversation for the download buttons; None where there is nothing."""
    if open_or_none(store, conversation_id) is None:
        return None, None
    files = []
    for fmt in ("markdown", "jsonl"):
        try:
            files.append(str(store.export(conversation_id, fmt, EXPORTS)))
        except SLMError:  # nothing answered yet: nothing to train on
            files.append(None)
    return files[0], files[1]


def title_of(conversation: Optional[Conversation]) -> str:
    return conversation.title if conversation else ""

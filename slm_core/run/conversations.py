"""Saved chats: one JSON file per conversation in <runs>/conversations/<id>.json, written atomically (fsio).

A conversation is a tree of messages, so nothing is lost: editing a user message adds a sibling of it (the earlier
branch stays), regenerating an answer adds a sibling answer (the alternatives stay). `current` is the leaf of the
branch shown; switching to another alternative moves it. Export writes the shown branch as Markdown, or as the
chat-messages JSONL that instruction data reads ({"messages": [{role, content}, ...]} per line; slm_core.data),
so a conversation trains with the instruction recipe as it is. No torch.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, atomic_write_text, read_state

FOLDER = "conversations"
VERSION = 1
TITLE_CHARS = 60  # a title made from the first message is cut here
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,80}$")  # ids reach the page and come back: never a path
ROLES = ("user", "assistant")


def _now() -> float:
    return round(time.time(), 3)


def title_from(text: str) -> str:
    line = " ".join(str(text).split())
    return (line[:TITLE_CHARS - 1] + "…") if len(line) > TITLE_CHARS else (line or "New conversation")


@dataclass
class Conversation:
    id: str
    model: str = ""
    tag: str = "best"
    settings: dict = field(default_factory=dict)
    system: str = ""
    title: str = "New conversation"
    titled: bool = False  # renamed by hand: the first message no longer names it
    created: float = field(default_factory=_now)
    updated: float = field(default_factory=_now)
    nodes: dict = field(default_factory=dict)  # id → {id, parent, role, content, created, stats?, stopped?}
    current: Optional[str] = None  # the leaf of the branch shown

    # ---- the tree ----------------------------------------------------------------------------------

    def add(self, parent: Optional[str], role: str, content: str, **extra: Any) -> str:
        """A new message under `parent` (None: a first message), made the shown branch's leaf; its id."""
        if role not in ROLES:
            raise SLMError(f"a message's role is {role!r}: use one of {', '.join(ROLES)}")
        if parent is not None and parent not in self.nodes:
            raise SLMError(f"message {parent!r} is not in conversation {self.id}: reopen the conversation")
        node_id = f"m{len(self.nodes) + 1}"
        while node_id in self.nodes:
            node_id += "x"
        self.nodes[node_id] = {"id": node_id, "parent": parent, "role": role, "content": str(content),
                               "created": _now(), **extra}
        self.current = node_id
        if role == "user" and not self.titled and parent is None and len(self.roots()) == 1:
            self.title = title_from(content)
        return node_id

    def children(self, node_id: Optional[str]) -> list[str]:
        """Children of `node_id` (None: the first messages), oldest first."""
        return [n["id"] for n in self.nodes.values() if n.get("parent") == node_id]

    def roots(self) -> list[str]:
        return self.children(None)

    def path(self, leaf: Optional[str] = None) -> list[dict]:
        """The messages from the first to `leaf` (default: the shown branch)."""
        out, node_id = [], leaf if leaf is not None else self.current
        while node_id is not None and node_id in self.nodes and len(out) <= len(self.nodes):
            out.append(self.nodes[node_id])
            node_id = self.nodes[node_id].get("parent")
        return out[::-1]

    def messages(self, leaf: Optional[str] = None, system: bool = False) -> list[dict]:
        """The branch as chat messages ({role, content}); with `system`, the system prompt first when set."""
        first = [{"role": "system", "content": self.system}] if system and self.system.strip() else []
        return first + [{"role": n["role"], "content": n["content"]} for n in self.path(leaf)]

    def siblings(self, node_id: str) -> list[str]:
        """The alternatives of a message: it and the other messages of its role under the same parent."""
        node = self.nodes[node_id]
        return [i for i in self.children(node.get("parent")) if self.nodes[i]["role"] == node["role"]]

    def switch(self, node_id: str) -> None:
        """Show the branch through `node_id`, down its newest children to a leaf."""
        if node_id not in self.nodes:
            raise SLMError(f"message {node_id!r} is not in conversation {self.id}: reopen the conversation")
        while True:
            below = self.children(node_id)
            if not below:
                break
            node_id = below[-1]
        self.current = node_id

    def leaves(self) -> list[str]:
        parents = {n.get("parent") for n in self.nodes.values()}
        return [i for i in self.nodes if i not in parents]

    # ---- files -------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {"version": VERSION, "id": self.id, "title": self.title, "titled": self.titled, "model": self.model,
                "tag": self.tag, "settings": self.settings, "system": self.system, "created": self.created,
                "updated": self.updated, "current": self.current, "nodes": list(self.nodes.values())}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Conversation":
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data.get("id"):
            raise SLMError(f"{where} is not a saved conversation (no id or messages): delete it")
        nodes = {}
        for node in data["nodes"]:
            if not isinstance(node, dict) or node.get("role") not in ROLES or "id" not in node:
                raise SLMError(f"{where} holds a message that is not {{id, role, content}}: delete it")
            nodes[str(node["id"])] = dict(node, content=str(node.get("content", "")))
        return cls(id=str(data["id"]), model=str(data.get("model") or ""), tag=str(data.get("tag") or "best"),
                   settings=dict(data.get("settings") or {}), system=str(data.get("system") or ""),
                   title=str(data.get("title") or "New conversation"), titled=bool(data.get("titled")),
                   created=float(data.get("created") or 0), updated=float(data.get("updated") or 0), nodes=nodes,
                   current=data.get("current") if data.get("current") in nodes else None)

    # ---- export ------------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Model: `{self.model}` ({self.tag})  ", f"Saved: {_date(self.updated)}", ""]
        if self.system.strip():
            lines += ["## System", "", self.system.strip(), ""]
        for message in self.messages():
            lines += [f"## {message['role'].capitalize()}", "", message["content"].strip(), ""]
        return "\n".join(lines)

    def training_records(self, every_branch: bool = False) -> list[dict]:
        """{"messages": [...]} records ending with an answer (an unanswered last message is left out, as the
        instruction reader refuses a record that does not end with the assistant): the shown branch, or every
        branch (each leaf's path) with `every_branch`."""
        records = []
        for leaf in (self.leaves() if every_branch else [self.current]):
            messages = self.messages(leaf, system=True)
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()
            if any(m["role"] == "user" for m in messages) and messages[-1]["content"].strip():
                records.append({"messages": messages})
        return records

    def to_jsonl(self, every_branch: bool = False) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.training_records(every_branch))


def _date(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "?"


class ConversationStore:
    """The conversations of one runs folder."""

    def __init__(self, runs_dir: str | Path):
        self.folder = Path(runs_dir) / FOLDER

    def file(self, conversation_id: str) -> Path:
        if not isinstance(conversation_id, str) or not ID.match(conversation_id):
            raise SLMError(f"{conversation_id!r} is not a conversation id: pick one from the list")
        return self.folder / f"{conversation_id}.json"

    def new(self, model: str = "", tag: str = "best", settings: Optional[dict] = None, system: str = "") -> Conversation:
        """A fresh conversation (saved once it has a message)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Conversation(id=f"{stamp}-{secrets.token_hex(3)}", model=model, tag=tag, settings=dict(settings or {}),
                            system=system or "")

    def save(self, conversation: Conversation) -> None:
        conversation.updated = _now()
        atomic_write_json(self.file(conversation.id), conversation.to_json())

    def load(self, conversation_id: str) -> Conversation:
        """The conversation; a damaged file is moved aside (fsio.read_state) and named in the SLMError."""
        path = self.file(conversation_id)
        data = read_state(path)
        if data is None:
            raise SLMError(f"conversation {conversation_id} is gone (deleted meanwhile?): pick another")
        return Conversation.from_json(data, str(path))

    def list(self, query: str = "") -> list[dict]:
        """Rows {id, title, model, updated, created, messages, damaged}, newest first; `query` keeps those whose
        title or text holds it (case-insensitive). A damaged file is a row saying so, never an exception."""
        rows = []
        for path, damaged in self._files():
            if damaged:
                rows.append(self._damaged_row(path, "moved aside: it did not parse"))
                continue
            try:
                conversation = self.load(path.stem)
            except SLMError as error:
                aside = sorted(self.folder.glob(f"{path.name}.damaged-*"))
                rows.append(self._damaged_row(aside[-1] if aside else path, str(error)))
                continue
            if query.strip() and not _matches(conversation, query):
                continue
            rows.append({"id": conversation.id, "title": conversation.title, "model": conversation.model,
                         "updated": conversation.updated, "created": conversation.created,
                         "messages": len(conversation.path()), "damaged": None})
        if query.strip():
            rows = [r for r in rows if not r["damaged"] or query.lower() in r["title"].lower()]
        return sorted(rows, key=lambda r: r["updated"], reverse=True)

    def _files(self) -> Iterator[tuple[Path, bool]]:
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                continue
            if path.suffix == ".json" and ID.match(path.stem):
                yield path, False
            elif ".json.damaged-" in path.name:
                yield path, True

    @staticmethod
    def _damaged_row(path: Path, why: str) -> dict:
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = 0.0
        return {"id": path.name, "title": f"damaged: {path.name}", "model": "", "updated": stamp,
                "created": stamp, "messages": 0, "damaged": why}

    def rename(self, conversation_id: str, title: str) -> Conversation:
        title = " ".join(str(title or "").split())
        if not title:
            raise SLMError("a conversation needs a title: type one")
        conversation = self.load(conversation_id)
        conversation.title, conversation.titled = title[:200], True
        self.save(conversation)
        return conversation

    def delete(self, entry: str) -> None:
        """Delete a conversation, or a damaged file the list named (its row id is the file's name)."""
        self._entry_path(entry).unlink(missing_ok=True)

    def _entry_path(self, entry: str) -> Path:
        name = str(entry or "")
        stem = name.split(".json", 1)[0]
        if name.endswith(".json") or ".json.damaged-" in name:
            if ID.match(stem) and "/" not in name and "\\" not in name:
                return self.folder / name
        return self.file(name)

    def export(self, conversation_id: str, fmt: str, folder: Optional[Path] = None,
               every_branch: bool = False) -> Path:
        """Write the conversation as 'markdown' (.md) or 'jsonl' (chat-messages training records) into `folder`
        (default: <conversations>/exports); the file's path."""
        conversation = self.load(conversation_id)
        if fmt == "markdown":
            text, suffix = conversation.to_markdown(), ".md"
        elif fmt == "jsonl":
            text, suffix = conversation.to_jsonl(every_branch), ".jsonl"
            if not text:
                raise SLMError("this conversation has no answered message yet: nothing to train on")
        else:
            raise SLMError(f"export format {fmt!r} is unknown: use markdown or jsonl")
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", conversation.title).strip("-")[:40] or "conversation"
        path = Path(folder or self.folder / "exports") / f"{name}-{conversation.id}{suffix}"
        atomic_write_text(path, text)
        return path


def _matches(conversation: Conversation, query: str) -> bool:
    needle = query.strip().lower()
    return needle in conversation.title.lower() or any(needle in n["content"].lower()
                                                       for n in conversation.nodes.values())

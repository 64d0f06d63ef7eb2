"""Lineage: where every artifact came from. One record per artifact (`lineage.json` in its folder; a report card's
beside it in evals/), written atomically once the artifact is complete; an artifact made before records existed has
its record inferred from what its folder already says (config.yaml's init_from/teacher, status.json's parent,
quantization.json's and export.json's source, evals/ report cards). `scan` reads a runs folder into a Graph that
`slm lineage`, `slm runs --tree`, the Runs tab's family tree, the clean-up and exports' model-tree metadata read.
No torch: the Studio's server reads this module."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, read_state
from slm_core.run import runs

RECORD = "lineage.json"
VERSION = 1
RELATIONS = ("init_from", "teacher", "adapter_of", "merge_of", "quantized_from", "exported_from", "evaluated")
NESTED = ("quantized", "export")  # a run's derived artifacts live inside it (models.quantized.artifact_dir)
CARD_GLOB = "report-*.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EXTERNAL_KINDS = ("hub", "folder", "gguf", "missing")
# Lower is better for these scores; every other score (task accuracy, judge) is higher-is-better.
LOWER_IS_BETTER = ("val_loss", "ppl", "ppl_common")


# ---- writing ---------------------------------------------------------------------------------------

def command_line(argv: Optional[list[str]] = None) -> str:
    """The command that made an artifact, as a person would type it again (`slm ...` for the CLI's entry points)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("slm", "__main__.py"):
        argv = ["slm", *argv[1:]]
    return shlex.join(argv)


def write_record(folder: str | Path, kind: str, parents: Iterable[Optional[dict]], *, data: Optional[dict] = None,
                 tokenizer: Optional[str] = None, details: Optional[dict] = None, command: Optional[str] = None,
                 name: str = RECORD) -> dict:
    """Write one artifact's lineage record atomically (call it once the artifact is complete)."""
    record = {"version": VERSION, "kind": kind, "parents": [p for p in parents if p], "data": data,
              "tokenizer": tokenizer, "details": details or {}, "command": command or command_line(),
              "created_at": time.time()}
    atomic_write_json(Path(folder) / name, record)
    return record


def parent_ref(source: Any, relation: str, near: Optional[Path] = None, runs_dir: Optional[Path] = None
               ) -> Optional[dict]:
    """A parent as recorded: the source as given, its folder when it is local, and its Hub id when it is one."""
    if source is None or not str(source).strip():
        return None
    if relation not in RELATIONS:
        raise SLMError(f"unknown lineage relation {relation!r}: use one of {', '.join(RELATIONS)}")
    text = str(source)
    ref: dict = {"ref": text, "relation": relation}
    path = _local(text, near, runs_dir)
    if path is not None:
        ref["path"] = str(path)
    hub = _hub_of_snapshot(path) if path is not None else _hub_id(text)
    if hub:
        ref["hub"] = hub
    return ref


def record_run(run_dir: str | Path, config, *, data_fingerprint: Optional[str], tokenizer: Optional[str],
               resume: bool = False) -> Optional[dict]:
    """A training run's record, made when its identity is frozen (before the first step, so a killed run has it);
    a resume keeps the first start's record."""
    run_dir = Path(run_dir)
    if resume and (run_dir / RECORD).exists():
        return None
    settings = dataclasses.asdict(config)
    kind, parents = _run_lineage(settings, bool(config.uses_lora), run_dir)
    data = {"fingerprint": data_fingerprint, "source": settings["data"].get("source")}
    return write_record(run_dir, kind, parents, data=data, tokenizer=tokenizer,
                        details={"mode": settings["train"]["mode"], "preset": settings.get("preset")})


def record_derived(folder: str | Path, source: Any, relation: str, *, near: Path, runs_dir: Optional[Path] = None,
                   tokenizer: Optional[str] = None, details: Optional[dict] = None, command: Optional[str] = None) -> dict:
    """A quantized model's or an export's record (`folder` may be the temporary folder renamed into `near`)."""
    ref = derived_parent(source, relation, near=Path(near), runs_dir=runs_dir, fmt=(details or {}).get("format"))
    kind = {"quantized_from": "quantized", "merge_of": "merge"}.get(ref["relation"] if ref else relation, "export")
    upstream = node_at(Path(ref["path"])) if ref and ref.get("path") else None
    return write_record(folder, kind, [ref], data=(upstream or {}).get("data"),
                        tokenizer=tokenizer or (upstream or {}).get("tokenizer"), details=details, command=command)


def derived_parent(source: Any, relation: str, near: Path, runs_dir: Optional[Path] = None,
                   fmt: Optional[str] = None) -> Optional[dict]:
    """The parent of a quantized model or export. An export of a LoRA model is a merge (base and adapter folded
    into one weight), except a GGUF-LoRA bundle, which keeps the adapter apart."""
    ref = parent_ref(source, relation, near=near, runs_dir=runs_dir)
    if relation == "exported_from" and ref and ref.get("path") and _is_adapter(Path(ref["path"])) and fmt != "gguf-lora":
        ref["relation"] = "merge_of"
    return ref


def record_card(card_path: str | Path, model_folder: str | Path) -> dict:
    """A report card's record, beside it in evals/ (named so that runs.latest_card never takes it for a card)."""
    card_path = Path(card_path)
    ref = {"ref": str(model_folder), "relation": "evaluated", "path": str(Path(model_folder).resolve())}
    return write_record(card_path.parent, "report", [ref], name=_card_record_name(card_path))


def _card_record_name(card_path: Path) -> str:
    return f"lineage-{card_path.name}"


def _run_lineage(settings: dict, uses_lora: bool, run_dir: Path) -> tuple[str, list[Optional[dict]]]:
    """A run's kind and parents from its settings (a RunConfig as a dict, or a config.yaml)."""
    train, distill = settings.get("train") or {}, settings.get("distill") or {}
    mode = train.get("mode") or "pretrain"
    parents: list[Optional[dict]] = []
    if mode != "pretrain" and train.get("init_from"):
        parents.append(parent_ref(train["init_from"], "adapter_of" if uses_lora else "init_from", near=run_dir))
    if mode == "distill" and distill.get("teacher"):
        parents.append(parent_ref(distill["teacher"], "teacher", near=run_dir))
    kind = "shrink" if mode == "distill" and distill.get("shrink_layers") else ("lora" if mode == "lora" else mode)
    return kind, parents


# ---- resolving a source to a node ------------------------------------------------------------------

def _local(text: str, near: Optional[Path], runs_dir: Optional[Path]) -> Optional[Path]:
    given = Path(text).expanduser()
    candidates = [given]
    if not given.is_absolute():  # a bare name means a run beside the artifact first, as the command meant it then
        roots = [runs_root(near) if near else None, runs_dir]
        candidates = [Path(root) / text for root in roots if root] + [given, runs.runs_dir() / text]
    for path in candidates:
        if path.exists():
            return artifact_home(path.resolve())
    return None


def artifact_home(path: Path) -> Path:
    """The artifact a path belongs to: a run's checkpoint folder is the run."""
    return path.parent.parent if path.parent.name == "checkpoints" else path


def runs_root(near: Path) -> Optional[Path]:
    """The runs folder holding `near` (the parent of the first run folder above it), if any."""
    for folder in [Path(near), *Path(near).parents]:
        if (folder / runs.STATUS_FILE).exists():
            return folder.parent
    return None


def _hub_id(text: str) -> Optional[str]:
    repo = text.split("@")[0]
    return repo if HUB_ID.match(repo) and not repo.startswith((".", "/")) else None


def _hub_of_snapshot(path: Path) -> Optional[str]:
    """A Hugging Face cache entry (…/models--org--name/snapshots/<commit>) is that Hub model."""
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/", 1)
    return None


def _is_adapter(path: Path) -> bool:
    return any((path / sub / "adapter").is_dir() for sub in ("", "checkpoints/best", "checkpoints/latest"))


# ---- reading one artifact (its record, else inferred) ----------------------------------------------

def node_at(folder: Path, warnings: Optional[list[str]] = None) -> Optional[dict]:
    """One artifact's lineage (None when the folder holds no artifact): its record, else what is inferred from
    its folder. A damaged record is moved aside and named in `warnings`, and the lineage inferred instead."""
    folder = Path(folder)
    try:
        record = read_state(folder / RECORD)
    except SLMError as damaged:
        (warnings if warnings is not None else []).append(str(damaged))
        record = None
    if isinstance(record, dict) and record.get("kind"):
        return dict(record, inferred=False)
    return infer(folder)


def infer(folder: Path) -> Optional[dict]:
    """The lineage of an artifact made before records existed, from what its folder already records."""
    folder = Path(folder)
    inferred = {"version": VERSION, "data": None, "tokenizer": None, "details": {}, "command": None,
                "created_at": None, "inferred": True}
    if (folder / "quantization.json").exists():
        meta = runs.read_json(folder / "quantization.json", {}) or {}
        ref = parent_ref(meta.get("source"), "quantized_from", near=folder)
        return dict(inferred, kind="quantized", parents=[ref] if ref else [], created_at=meta.get("created_at"),
                    details={"method": meta.get("method"), "group_size": meta.get("group_size")})
    if (folder / "export.json").exists():
        meta = runs.read_json(folder / "export.json", {}) or {}
        ref = derived_parent(meta.get("source"), "exported_from", near=folder, fmt=meta.get("format"))
        kind = "merge" if ref and ref["relation"] == "merge_of" else "export"
        return dict(inferred, kind=kind, parents=[ref] if ref else [], created_at=meta.get("created_at"),
                    details={"format": meta.get("format"), "gguf_type": meta.get("gguf_type")})
    if (folder / "config.yaml").exists() or (folder / runs.STATUS_FILE).exists():
        return _infer_run(folder, inferred)
    if (folder / "config.json").exists():
        return dict(inferred, kind="folder", parents=[])
    return None


def _infer_run(folder: Path, inferred: dict) -> dict:
    settings = _read_yaml(folder / "config.yaml")
    kind, parents = _run_lineage(settings, _uses_lora(settings), folder)
    status = runs.read_json(folder / runs.STATUS_FILE, {}) or {}
    if not settings and status.get("parent"):  # no config.yaml (killed early): the status still names it
        parents = [parent_ref(status["parent"], "init_from", near=folder)]
    data = runs.read_json(folder / "data.json", {}) or {}
    return dict(inferred, kind=kind if settings else status.get("mode") or "run", parents=[p for p in parents if p],
                data={"fingerprint": data.get("fingerprint"), "source": data.get("source")} if data else None,
                created_at=status.get("started_at"), details={"mode": (settings.get("train") or {}).get("mode")})


def _uses_lora(settings: dict) -> bool:
    """RunConfig.uses_lora on a config.yaml read as plain YAML (building a RunConfig per old run costs ~30 ms;
    the defaults here are the config's: preference.lora and grpo.lora are true unless set)."""
    mode = (settings.get("train") or {}).get("mode")
    section = {"dpo": "preference", "orpo": "preference", "grpo": "grpo"}.get(mode)
    return mode == "lora" or (section is not None and (settings.get(section) or {}).get("lora", True) is not False)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:  # libyaml's loader where installed: ~10x faster on hundreds of old runs
        loaded = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


# ---- the graph of a runs folder --------------------------------------------------------------------

@dataclass
class Graph:
    root: Path
    nodes: dict[str, dict] = field(default_factory=dict)
    children: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, node: dict) -> None:
        self.nodes[node["id"]] = node

    def link(self) -> None:
        self.children = {node_id: [] for node_id in self.nodes}
        for node in self.nodes.values():
            for parent in node["parents"]:
                self.children.setdefault(parent["id"], []).append((node["id"], parent["relation"]))

    def find(self, name: str) -> dict:
        """A node by its name in the tree, its folder, a run name or a Hub id."""
        text = str(name)
        for key in (text, f"hub:{text}"):
            if key in self.nodes:
                return self.nodes[key]
        by_name = [n for n in self.nodes.values() if n["name"] == text]
        if by_name:
            return by_name[0]
        path = Path(text).expanduser()
        for candidate in (path, self.root / text):
            if candidate.exists() and str(artifact_home(candidate.resolve())) in self.nodes:
                return self.nodes[str(artifact_home(candidate.resolve()))]
        raise SLMError(f"no artifact named '{name}' in {self.root}: `slm runs --tree` shows every name")

    def ancestors(self, node_id: str) -> list[str]:
        return _walk(node_id, lambda n: [p["id"] for p in self.nodes[n]["parents"]])

    def descendants(self, node_id: str) -> list[str]:
        return _walk(node_id, lambda n: [c for c, _ in self.children.get(n, [])])

    def roots(self, among: Optional[set] = None) -> list[str]:
        among = set(self.nodes) if among is None else among
        return sorted((n for n in among if not any(p["id"] in among for p in self.nodes[n]["parents"])),
                      key=lambda n: self.nodes[n]["name"])

    def to_json(self, focus: Optional[str] = None) -> dict:
        shown = self.slice(focus) if focus else set(self.nodes)
        nodes = [_public(self.nodes[n]) for n in sorted(shown, key=lambda n: self.nodes[n]["name"])]
        edges = [{"from": p["id"], "to": n, "relation": p["relation"]} for n in shown
                 for p in self.nodes[n]["parents"] if p["id"] in shown]
        out = {"root": str(self.root), "nodes": nodes, "edges": sorted(edges, key=lambda e: (e["from"], e["to"]))}
        if focus:
            out["node"] = focus
            out["ancestors"], out["descendants"] = self.ancestors(focus), self.descendants(focus)
        if self.warnings:
            out["warnings"] = self.warnings
        return out

    def slice(self, focus: str) -> set:
        return {focus, *self.ancestors(focus), *self.descendants(focus)}


def _walk(start: str, step) -> list[str]:
    seen, order, todo = {start}, [], list(step(start))
    while todo:
        node = todo.pop(0)
        if node not in seen:
            seen.add(node)
            order.append(node)
            todo.extend(step(node))
    return order


def _public(node: dict) -> dict:
    return {k: v for k, v in node.items() if not k.startswith("_")}


def scan(runs_dir: Optional[str | Path] = None, sizes: bool = True) -> Graph:
    """Every artifact under the runs folder (runs, their quantized/ and export/ artifacts, report cards, folders
    beside them) and every base they name from outside it (a Hub id, a cache entry, a local folder, a GGUF)."""
    root = runs.runs_dir(runs_dir)
    graph = Graph(root)
    for folder in artifact_folders(root):
        record = node_at(folder, graph.warnings)
        if record is not None:
            _add_artifact(graph, folder, record, sizes)
    for node in list(graph.nodes.values()):
        for parent in node["parents"]:
            if parent["id"] not in graph.nodes:
                graph.add(_external(parent, root, sizes))
    graph.link()
    return graph


def artifact_folders(root: Path) -> Iterable[Path]:
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        yield entry
        for sub in NESTED:
            if (entry / sub).is_dir():
                yield from sorted(p for p in (entry / sub).iterdir() if p.is_dir() and not p.name.startswith("."))


def _add_artifact(graph: Graph, folder: Path, record: dict, sizes: bool) -> None:
    node_id = str(folder)  # the runs folder is resolved already: no resolve() per artifact
    status = runs.read_json(folder / runs.STATUS_FILE, {}) if (folder / runs.STATUS_FILE).exists() else {}
    scores = {"val_loss": status["best_val_loss"]} if isinstance(status, dict) and \
        status.get("best_val_loss") is not None else {}
    cards = sorted((folder / "evals").glob(CARD_GLOB)) if (folder / "evals").is_dir() else []
    for card_path in cards:
        card = runs.read_json(card_path, None)
        if not isinstance(card, dict):
            continue
        card_scores = card_scores_of(card)
        scores.update(card_scores)  # the newest card's scores are the model's
        made = runs.read_json(card_path.parent / _card_record_name(card_path), {}) or {}
        graph.add({"id": str(card_path), "name": f"{display_name(folder, graph.root)}/evals/{card_path.stem}",
                   "kind": "report", "path": str(card_path), "size_bytes": card_path.stat().st_size if sizes else None,
                   "scores": card_scores, "parents": [{"id": node_id, "relation": "evaluated"}],
                   "data": None, "tokenizer": None, "details": {}, "command": made.get("command"),
                   "created_at": made.get("created_at"), "inferred": not made, "state": None})
    parents = [{"id": _parent_id(p, folder, graph.root), "relation": p.get("relation", "init_from"),
                "_ref": p} for p in record.get("parents") or []]
    graph.add({"id": node_id, "name": display_name(folder, graph.root), "kind": record["kind"], "path": str(folder),
               "size_bytes": folder_bytes(folder, skip=NESTED if status else ()) if sizes else None,
               "scores": scores, "parents": parents, "data": record.get("data"), "tokenizer": record.get("tokenizer"),
               "details": record.get("details") or {}, "command": record.get("command"),
               "created_at": record.get("created_at"), "inferred": record.get("inferred", False),
               "state": status.get("state") if isinstance(status, dict) else None})


def _parent_id(ref: dict, folder: Path, root: Path) -> str:
    if ref.get("hub"):
        return f"hub:{ref['hub']}"
    path = Path(ref["path"]) if ref.get("path") else None
    if path is None or not path.exists():  # the runs folder moved, or the parent is gone: look again by name
        path = _local(str(ref.get("ref", "")), folder, root) if ref.get("ref") else None
    if path is not None:
        hub = _hub_of_snapshot(path)
        return f"hub:{hub}" if hub else str(path if path.is_absolute() else path.resolve())
    gone = Path(ref.get("path") or str(ref.get("ref")))  # one gone artifact is one node, however it was named
    return f"missing:{artifact_home(gone if gone.is_absolute() else root / gone)}"


def _external(parent: dict, root: Path, sizes: bool) -> dict:
    ref, node_id = parent.get("_ref") or {}, parent["id"]
    path = Path(ref["path"]) if ref.get("path") and Path(ref["path"]).exists() else None
    if node_id.startswith("hub:"):
        kind, name = "hub", node_id[4:]
    elif node_id.startswith("missing:"):
        kind, name = "missing", f"{display_name(Path(node_id[8:]), root)} (gone)"
    else:
        path = Path(node_id)
        kind, name = ("gguf" if path.suffix.lower() == ".gguf" else "folder"), display_name(path, root)
    return {"id": node_id, "name": name, "kind": kind, "path": str(path) if path else None,
            "size_bytes": folder_bytes(path) if sizes and path else None, "scores": {}, "parents": [], "data": None,
            "tokenizer": None, "details": {}, "command": None, "created_at": None, "inferred": True, "state": None}


def display_name(path: Path, root: Path) -> str:
    """How a person knows the artifact: its path inside the runs folder, else its folder or file name."""
    text, prefix = str(path), str(root).rstrip(os.sep) + os.sep  # strings: pathlib costs ms per call on 500 nodes
    if text.startswith(prefix):
        return text[len(prefix):].replace(os.sep, "/")
    return Path(path).name


def folder_bytes(path: Path, skip: tuple = ()) -> int:
    """Bytes on disk under `path` (a file's own size); `skip`: sub-folders at its top that are artifacts of their own."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total, todo = 0, [(path, True)]
    while todo:
        folder, top = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not (top and entry.name in skip):
                    todo.append((entry.path, False))
            else:
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
    return total


def card_scores_of(card: dict) -> dict:
    """A report card's headline numbers: perplexities, each task's primary metric, the judge's mean."""
    scores = {key: card[src] for key, src in (("ppl", "ppl_own"), ("ppl_common", "ppl_common"))
              if card.get(src) is not None}
    for task, row in (card.get("tasks") or {}).items():
        if isinstance(row, dict):
            scores[task.removeprefix("slm_")] = runs.primary_metric(row)[1]
    means = [v for v in ((card.get("judge") or {}).get("means") or {}).values() if v is not None]
    if means:
        scores["judge"] = sum(means) / len(means)
    return scores


def better(score: str, a: float, b: float) -> bool:
    """Whether value `a` of `score` beats `b`."""
    return a < b if score in LOWER_IS_BETTER else a > b

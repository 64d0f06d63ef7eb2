"""Lineage carried into exports: the Hugging Face model tree (a model card's `base_model`, `base_model_relation`,
`datasets`) and llama.cpp's `general.base_model.*` GGUF keys, read from the records of slm_core.run.lineage by
walking up from the exported model (no runs-folder scan)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from slm_core.run.lineage import HUB_ID, derived_parent, display_name, node_at, runs_root

# The Hub's base_model_relation for each of our relations (https://huggingface.co/docs/hub/model-cards).
HUB_RELATION = {"adapter_of": "adapter", "merge_of": "merge", "quantized_from": "quantized", "init_from": "finetune",
                "teacher": "finetune"}
HUB_URL = "https://huggingface.co/"


def export_lineage(source, fmt: str, near: Path, runs_dir: Optional[Path] = None) -> dict:
    """What an export of `source` (as `fmt`, into `near`) says about where it came from: {"base_model_relation",
    "bases": [{"name", "hub"}], "datasets", "ancestry": markdown lines}."""
    ref = derived_parent(source, "exported_from", near=Path(near), runs_dir=runs_dir, fmt=fmt)
    if not ref or not ref.get("path"):
        return {"base_model_relation": None, "bases": [], "datasets": [], "ancestry": []}
    hub_relation, bases = _model_tree({"parents": [ref]})
    return {"base_model_relation": hub_relation, "bases": [_base(b) for b in bases],
            "datasets": _datasets(Path(ref["path"])), "ancestry": _ancestry(Path(ref["path"]))}


def _model_tree(record: dict, depth: int = 0) -> tuple[Optional[str], list[dict]]:
    """The Hub relation of the model a record describes and the parents it names: an export is the model it was
    exported from; a merge's bases are its adapter's bases."""
    parents = record.get("parents") or []
    if not parents or depth > 50:
        return None, []
    first = parents[0]
    if first["relation"] == "exported_from":
        upstream = node_at(Path(first["path"])) if first.get("path") else None
        return _model_tree(upstream, depth + 1) if upstream else (None, [])
    if first["relation"] == "merge_of":
        adapter = node_at(Path(first["path"])) if first.get("path") else None
        bases = [p for p in (adapter or {}).get("parents") or [] if p["relation"] == "adapter_of"]
        return "merge", bases or [first]
    relation = HUB_RELATION.get(first["relation"])
    return relation, [p for p in parents if HUB_RELATION.get(p["relation"]) == relation]


def _base(ref: dict) -> dict:
    if ref.get("hub"):
        return {"name": ref["hub"], "hub": ref["hub"]}
    path = Path(ref["path"]) if ref.get("path") else None
    if path is None:
        return {"name": ref["ref"], "hub": None}
    return {"name": display_name(path, runs_root(path) or path.parent), "hub": None}


def _datasets(folder: Path) -> list[str]:
    """Hub datasets the model (or the run it came from) trained on."""
    for record in _walk_up(folder):
        source = ((record.get("data") or {}).get("source") or "")
        if source:
            repo = str(source).split(":")[0]
            return [repo] if HUB_ID.match(repo) and not Path(str(source)).exists() else []
    return []


def _walk_up(folder: Path, limit: int = 200):
    todo, seen = [Path(folder)], set()
    while todo and len(seen) < limit:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        record = node_at(current)
        if record is None:
            continue
        yield dict(record, _folder=current)
        todo += [Path(p["path"]) for p in record.get("parents") or [] if p.get("path") and Path(p["path"]).exists()]


def _ancestry(folder: Path) -> list[str]:
    """One markdown line per ancestor: name, kind, how it made its child, what it trained on, the command."""
    lines = []
    for record in _walk_up(folder):
        here = record["_folder"]
        name = display_name(here, runs_root(here) or here.parent)
        made = ", ".join(f"{p['relation']} {_base(p)['name']}" for p in record.get("parents") or []) or "no parent"
        data = record.get("data") or {}
        extra = f"; data {data.get('source')} ({data.get('fingerprint')})" if data.get("source") else ""
        extra += f"; tokenizer {record['tokenizer']}" if record.get("tokenizer") else ""
        extra += f"; `{record['command']}`" if record.get("command") else ""
        lines.append(f"- **{name}** ({record['kind']}{', inferred' if record.get('inferred') else ''}): {made}{extra}")
    return lines


def card_metadata(lineage: dict) -> dict:
    """The model card's front matter the Hub reads for its model tree."""
    meta: dict = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["slm-studio"]}
    if lineage.get("bases"):
        names = [b["name"] for b in lineage["bases"]]
        meta["base_model"] = names[0] if len(names) == 1 else names
        meta["base_model_relation"] = lineage["base_model_relation"]
    if lineage.get("datasets"):
        meta["datasets"] = lineage["datasets"]
    return meta


def card_body(lineage: dict) -> str:
    if not lineage.get("ancestry"):
        return ""
    local = [b["name"] for b in lineage.get("bases") or [] if not b["hub"]]
    note = (f"\n\n`base_model` names local SLM Studio artifacts ({', '.join(local)}), not Hub repositories, "
            "unless they are uploaded under those names." if local else "")
    return "## Lineage\n\n" + "\n".join(lineage["ancestry"]) + note + "\n"


def gguf_base_models(lineage: dict) -> list[dict]:
    """`general.base_model.{i}.*` entries as llama.cpp's convert_hf_to_gguf.py derives them from a Hub id (name,
    organization, repo_url; gguf's own Metadata helpers), or just the name for a local artifact."""
    from gguf.metadata import Metadata  # gguf: the same id parsing llama.cpp uses

    entries = []
    for base in lineage.get("bases") or []:
        if not base["hub"]:
            entries.append({"name": base["name"]})
            continue
        full, org, _, _, version, _ = Metadata.get_model_id_components(base["hub"])
        entry = {"name": Metadata.id_to_title(full)} if full else {"name": base["hub"]}
        if org:
            entry["organization"] = Metadata.id_to_title(org)
        if version:
            entry["version"] = version
        if org and full:
            entry["repo_url"] = f"{HUB_URL}{org}/{full}"
        entries.append(entry)
    return entries


def add_gguf_base_models(writer, entries: Optional[list[dict]]) -> None:
    """Write the entries on a gguf.GGUFWriter in the order llama.cpp's Metadata.set_gguf_meta_model does."""
    if not entries:
        return
    writer.add_base_model_count(len(entries))
    for i, entry in enumerate(entries):
        for key in ("name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"):
            if entry.get(key):
                getattr(writer, f"add_base_model_{key}")(i, entry[key])

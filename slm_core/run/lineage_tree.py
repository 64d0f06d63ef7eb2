"""What people ask of the lineage graph (slm_core.run.lineage): the tree as text, what deleting a node would take
with it or orphan, and what can be deleted (artifacts no descendant needs that something else supersedes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.run import runs
from slm_core.run.lineage import EXTERNAL_KINDS, Graph, better, folder_bytes
from slm_core.run.manifest import step_of
from slm_core.system import format_bytes

SCORE_ORDER = ("val_loss", "ppl", "ppl_common")


# ---- the tree as text ------------------------------------------------------------------------------

def render(graph: Graph, focus: Optional[str] = None) -> str:
    """The forest (or, with `focus`, the trees through that node: its ancestors above, its descendants below),
    one node a line: relation, name, kind, size on disk, scores. A node under several parents is drawn once."""
    shown = graph.slice(focus) if focus else set(graph.nodes)
    lines: list[str] = []
    drawn: set = set()
    for root in graph.roots(shown):
        _draw(graph, root, None, "", True, shown, drawn, lines, focus, top=True)
    return "\n".join(lines)


def _draw(graph, node_id, relation, indent, last, shown, drawn, lines, focus, top=False) -> None:
    node = graph.nodes[node_id]
    branch = "" if top else ("└─ " if last else "├─ ")
    label = f"{relation}: " if relation else ""
    mark = "  ◀" if node_id == focus else ""
    if node_id in drawn:
        lines.append(f"{indent}{branch}{label}{node['name']} (shown above){mark}")
        return
    drawn.add(node_id)
    lines.append(f"{indent}{branch}{label}{node['name']}  {describe(node)}{mark}")
    kids = [(c, r) for c, r in graph.children.get(node_id, []) if c in shown]
    kids.sort(key=lambda cr: (graph.nodes[cr[0]]["kind"] == "report", graph.nodes[cr[0]]["name"]))
    below = indent + ("" if top else ("   " if last else "│  "))
    for i, (child, rel) in enumerate(kids):
        _draw(graph, child, rel, below, i == len(kids) - 1, shown, drawn, lines, focus)


def describe(node: dict) -> str:
    """`[kind] size · scores` for one node."""
    parts = [f"[{node['kind']}{_detail(node)}]"]
    if node.get("size_bytes") is not None:
        parts.append(format_bytes(node["size_bytes"]))
    if node.get("state") and node["state"] != "finished":
        parts.append(node["state"])
    scores = format_scores(node.get("scores") or {})
    if scores:
        parts.append(scores)
    if node.get("inferred") and node["kind"] not in EXTERNAL_KINDS:
        parts.append("(inferred)")
    return " · ".join(parts)


def _detail(node: dict) -> str:
    details = node.get("details") or {}
    extra = details.get("method") or "-".join(str(v) for v in (details.get("format"), details.get("gguf_type")) if v)
    return f" {extra}" if extra else ""


def format_scores(scores: dict) -> str:
    ordered = [k for k in SCORE_ORDER if k in scores] + sorted(k for k in scores if k not in SCORE_ORDER)
    return " ".join(f"{k} {scores[k]:.3g}" if isinstance(scores[k], (int, float)) else f"{k} {scores[k]}"
                    for k in ordered)


def score_delta(graph: Graph, node_id: str) -> list[dict]:
    """The node against each parent on the scores both have: what quantizing, a LoRA or a merge changed."""
    node, rows = graph.nodes[node_id], []
    for parent in node["parents"]:
        theirs = graph.nodes.get(parent["id"], {}).get("scores") or {}
        for score in sorted(set(theirs) & set(node.get("scores") or {})):
            mine, base = node["scores"][score], theirs[score]
            rows.append({"parent": graph.nodes[parent["id"]]["name"], "relation": parent["relation"], "score": score,
                         "parent_value": base, "value": mine, "delta": mine - base,
                         "better": better(score, mine, base) if mine != base else None})
    return rows


# ---- deleting one node -----------------------------------------------------------------------------

def deletion_plan(graph: Graph, node_id: str) -> dict:
    """What deleting a node removes (it and the artifacts inside its folder), the space it frees, every descendant,
    and those it would orphan: descendants left without any base (a LoRA can no longer even load)."""
    node = graph.nodes[node_id]
    if node["kind"] in EXTERNAL_KINDS:
        raise SLMError(f"{node['name']} is not an artifact of this runs folder; delete it where it lives")
    inside = _inside(graph, node)
    removed = {node_id, *inside}
    descendants = graph.descendants(node_id)
    orphans = [d for d in descendants if d not in removed and graph.nodes[d]["parents"]
               and all(p["id"] in removed for p in graph.nodes[d]["parents"])]
    return {"node": node["name"], "path": node["path"], "frees_bytes": folder_bytes(Path(node["path"])),
            "removes": [graph.nodes[n]["name"] for n in sorted(inside)],
            "descendants": [graph.nodes[d]["name"] for d in descendants if d not in removed],
            "orphans": [graph.nodes[o]["name"] for o in orphans]}


def _inside(graph: Graph, node: dict) -> list[str]:
    folder = Path(node["path"])
    return [n for n, other in graph.nodes.items()
            if other is not node and other.get("path") and Path(other["path"]).is_relative_to(folder)]


def delete(graph: Graph, node_id: str, orphan: bool = False) -> dict:
    """Delete a node's files after checking its plan: refused, naming them, when it would orphan a descendant's
    only base unless `orphan` (the person confirmed). A running run is refused by runs.delete_run."""
    plan = deletion_plan(graph, node_id)
    if plan["orphans"] and not orphan:
        raise orphan_refusal(plan)
    remove_artifact(Path(plan["path"]), graph.nodes[node_id]["kind"])
    return plan


def orphan_refusal(plan: dict) -> SLMError:
    return SLMError(f"{plan['node']} is the only base of {', '.join(plan['orphans'])}: deleting it orphans them "
                    "(a LoRA no longer loads); delete those first, or confirm that they may be orphaned")


def remove_artifact(path: Path, kind: str) -> None:
    if kind == "report":
        for sibling in (path, path.with_suffix(".md"), path.with_name(f"lineage-{path.name}")):
            sibling.unlink(missing_ok=True)
    elif (path / runs.STATUS_FILE).exists():
        runs.delete_run(path)
    else:
        shutil.rmtree(path)


# ---- what can I delete ------------------------------------------------------------------------------

def cleanup_candidates(graph: Graph) -> list[dict]:
    """Artifacts no descendant needs that something supersedes, each with the space it frees, largest first:
    older checkpoint copies and a finished run's resume-only checkpoint, exports/quantized models superseded by a
    newer one of the same kind from the same source, and runs another from the same base beats on every score."""
    found = _checkpoints(graph) + _superseded(graph) + _dominated_runs(graph)
    folders = [Path(c["path"]) for c in found]  # one inside another candidate goes with it
    found = [c for c in found if not any(Path(c["path"]) != f and Path(c["path"]).is_relative_to(f) for f in folders)]
    return sorted(found, key=lambda c: -c["frees_bytes"])


def _needed(graph: Graph, node_id: str) -> bool:
    return any(graph.nodes[c]["kind"] != "report" for c, _ in graph.children.get(node_id, []))


def _candidate(name: str, path: Path, reason: str, kind: str) -> dict:
    return {"name": name, "path": str(path), "kind": kind, "reason": reason, "frees_bytes": folder_bytes(path)}


def _checkpoints(graph: Graph) -> list[dict]:
    found = []
    for node in graph.nodes.values():
        folder = Path(node["path"] or "") / "checkpoints"
        if node["state"] not in runs.TERMINAL_STATES or not folder.is_dir():  # a live run's fallbacks stay
            continue
        for prev in sorted(folder.glob("*.prev")):
            if (folder / prev.name.removesuffix(".prev")).is_dir():
                found.append(_candidate(f"{node['name']}/checkpoints/{prev.name}", prev,
                                        f"an older copy of {prev.name.removesuffix('.prev')}, superseded by the newer one",
                                        "checkpoint"))
        best, latest = step_of(folder / "best"), step_of(folder / "latest")
        if node["state"] == "finished" and best is not None and latest is not None and best != latest:
            found.append(_candidate(f"{node['name']}/checkpoints/latest", folder / "latest",
                                    f"only needed to resume this finished run; best (step {best}) scores better than "
                                    f"latest (step {latest})", "checkpoint"))
    return found


def _superseded(graph: Graph) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for node in graph.nodes.values():
        if node["kind"] in ("quantized", "export", "merge") and node["parents"]:
            details = node.get("details") or {}
            key = (node["parents"][0]["id"], node["kind"], details.get("format"), details.get("gguf_type"),
                   details.get("method"), details.get("group_size"))
            groups.setdefault(key, []).append(node)
    found = []
    for same in groups.values():
        same.sort(key=lambda n: n.get("created_at") or 0)
        for old in same[:-1]:
            if not _needed(graph, old["id"]):
                found.append(_candidate(old["name"], Path(old["path"]), f"superseded by the newer {same[-1]['name']}",
                                        old["kind"]))
    return found


def _dominated_runs(graph: Graph) -> list[dict]:
    found = []
    siblings: dict[tuple, list[dict]] = {}
    for node in graph.nodes.values():
        if node["state"] and node["parents"] and node["scores"]:
            siblings.setdefault((tuple(sorted(p["id"] for p in node["parents"])), node["kind"]), []).append(node)
    for same in siblings.values():
        for node in same:
            winner = next((o for o in same if o is not node and _dominates(o["scores"], node["scores"])), None)
            if winner and node["state"] in runs.TERMINAL_STATES and not _needed(graph, node["id"]):
                found.append(_candidate(node["name"], Path(node["path"]), f"{winner['name']} from the same base "
                                        "scores better on every score both have", node["kind"]))
    return found


def _dominates(a: dict, b: dict) -> bool:
    shared = set(a) & set(b)
    return bool(shared) and all(a[s] == b[s] or better(s, a[s], b[s]) for s in shared) and \
        any(better(s, a[s], b[s]) for s in shared)

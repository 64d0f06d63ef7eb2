"""The Runs tab's family tree (slm_core.run.lineage): every artifact a node (its symbol by kind), an edge per
relation (labelled), coloured by a chosen score; clicking a node (or picking it in the Node list) opens it: a run
in the tab's run panel, a model in the Chat or Export tab (studio.lineage_open), compared with its parent in one click
(the score delta of quantizing, of a LoRA), deleted after saying what depends on it, refusing to orphan a
descendant's only base unless that is confirmed. Reads folders only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gradio as gr
import plotly.graph_objects as go

from slm_core.errors import SLMError
from slm_core.run import lineage, lineage_tree
from slm_core.system import format_bytes
from studio.lineage_open import chat_target, export_target
from studio.tabs import PRIVATE, QUIET, message

BY_KIND = "kind"  # the colour choice that colours nodes by kind, not by a score
SYMBOLS = {"pretrain": "circle", "finetune": "diamond", "lora": "star", "distill": "triangle-up",
           "shrink": "triangle-down", "dpo": "pentagon", "orpo": "pentagon", "grpo": "hexagon", "merge": "hexagram",
           "quantized": "square", "export": "cross", "report": "circle-open", "hub": "star-square",
           "folder": "square-open", "gguf": "cross-open", "missing": "x"}
COLOURS = {"pretrain": "#4f46e5", "finetune": "#0891b2", "lora": "#db2777", "distill": "#7c3aed", "shrink": "#9333ea",
           "merge": "#ea580c", "quantized": "#16a34a", "export": "#64748b", "report": "#a3a3a3", "hub": "#facc15",
           "missing": "#ef4444"}
LABELS_UP_TO = 80  # more nodes than this: names on hover only (the figure stays readable)
# gr.Plot has no click event (Gradio 6: `change` only), so the page listens to plotly's own `plotly_click` and
# writes the clicked node's name (its trace's customdata) into a hidden box whose change event picks it, as the Node
# list does; a click count after a newline makes a second click on the same node a change too. (A Textbox's `input`
# event follows key presses only.) Plotly drops listeners when it replots into a new element: a watcher re-attaches
# after each redraw.
CLICKS_JS = """() => {
  let clicks = 0;
  const attach = () => {
    const plot = document.querySelector('#lineage-figure .js-plotly-plot');
    if (!plot || !plot._ev || plot._slmClicks === plot._ev) return;
    plot._slmClicks = plot._ev;
    plot.on('plotly_click', (event) => {
      const name = event && event.points && event.points.length ? event.points[0].customdata : null;
      const box = document.querySelector('#lineage-clicked textarea, #lineage-clicked input');
      if (typeof name !== 'string' || !box) return;  // an edge or a relation label: not a node
      box.value = `${name}\n${++clicks}`;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  };
  attach();
  new MutationObserver(attach).observe(document.body, {childList: true, subtree: true});
}"""


# ---- the figure ------------------------------------------------------------------------------------

def positions(graph: lineage.Graph) -> dict[str, tuple[float, float]]:
    """A tidy tree per root, left to right: leaves take consecutive columns, a parent sits over its children's
    middle; a node under several parents is placed under the first (its other edges still drawn). y = -depth."""
    first = {n: next((p["id"] for p in node["parents"] if p["id"] in graph.nodes), None)
             for n, node in graph.nodes.items()}
    kids: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for n, parent in first.items():
        if parent is not None:
            kids[parent].append(n)
    place: dict[str, tuple[float, float]] = {}
    column = 0.0
    for root in sorted((n for n, p in first.items() if p is None), key=lambda n: graph.nodes[n]["name"]):
        stack = [(root, 0, False)]
        while stack:  # iterative post-order: deep chains need no recursion
            node, depth, done = stack.pop()
            children = sorted(kids[node], key=lambda n: (graph.nodes[n]["kind"] == "report", graph.nodes[n]["name"]))
            if done or not children:
                xs = [place[c][0] for c in children]
                place[node] = ((sum(xs) / len(xs)) if xs else column, -float(depth))
                column += 0 if xs else 1
                continue
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in reversed(children))
    for n in graph.nodes:  # a cycle's members (never written, but a hand-edited record could): a row of their own
        if n not in place:
            column += 1
            place[n] = (column, 1.0)
    return place


def tree_figure(graph: lineage.Graph, score: Optional[str] = None, selected: Optional[str] = None) -> go.Figure:
    if not graph.nodes:
        return go.Figure(layout={"title": {"text": "No artifacts yet: start a run in the Train tab"}, "height": 220})
    xy = positions(graph)
    coloured = score if score and score != BY_KIND else None
    labels = len(graph.nodes) <= LABELS_UP_TO
    traces = _edges(graph, xy)
    for kind in sorted({n["kind"] for n in graph.nodes.values()}):
        members = [n for n in graph.nodes.values() if n["kind"] == kind]
        marker: dict[str, Any] = {"symbol": SYMBOLS.get(kind, "circle"), "size": 14, "line": {"width": 1}}
        if coloured:
            marker.update(color=[n["scores"].get(coloured) for n in members], coloraxis="coloraxis")
        else:
            marker.update(color=COLOURS.get(kind, "#94a3b8"))
        traces.append({"type": "scatter", "name": kind, "mode": "markers+text" if labels else "markers",
                       "x": [xy[n["id"]][0] for n in members], "y": [xy[n["id"]][1] for n in members],
                       "text": [n["name"] for n in members], "textposition": "bottom center",
                       "customdata": [n["name"] for n in members], "hoverinfo": "text", "marker": marker,
                       "hovertext": [f"{n['name']}<br>{lineage_tree.describe(n)}" for n in members]})
    if selected in graph.nodes:
        x, y = xy[selected]
        traces.append({"type": "scatter", "x": [x], "y": [y], "mode": "markers", "name": "picked", "hoverinfo": "skip",
                       "marker": {"size": 26, "symbol": "circle-open", "color": "#111827", "line": {"width": 3}}})
    depth = -min(y for _, y in xy.values())
    layout: dict[str, Any] = {"height": int(min(1400, 240 + 90 * depth)), "uirevision": "lineage",
                              "hovermode": "closest", "clickmode": "event",  # a click names the node under it
                              "margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "legend": {"orientation": "h"},
                              "xaxis": {"visible": False}, "yaxis": {"visible": False}, "plot_bgcolor": "rgba(0,0,0,0)"}
    if coloured:
        layout["coloraxis"] = {"colorscale": "Viridis", "reversescale": coloured in lineage.LOWER_IS_BETTER,
                               "colorbar": {"title": {"text": coloured}}}
    # Built from plain dicts without plotly's per-element validation: 500 nodes draw ~5x faster (bench_lineage.py).
    return go.Figure(data=traces, layout=layout, _validate=False)


def _edges(graph: lineage.Graph, xy: dict) -> list[dict]:
    xs, ys, mid_x, mid_y, names = [], [], [], [], []
    for node in graph.nodes.values():
        for parent in node["parents"]:
            if parent["id"] not in xy:
                continue
            (x0, y0), (x1, y1) = xy[parent["id"]], xy[node["id"]]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
            mid_x.append((x0 + x1) / 2)
            mid_y.append((y0 + y1) / 2)
            names.append(parent["relation"])
    return [{"type": "scatter", "x": xs, "y": ys, "mode": "lines", "line": {"color": "#cbd5e1", "width": 1.5},
             "hoverinfo": "skip", "name": "edges", "showlegend": False},
            {"type": "scatter", "x": mid_x, "y": mid_y, "mode": "text", "text": names, "hoverinfo": "skip",
             "textfont": {"size": 9, "color": "#64748b"}, "name": "relations", "showlegend": False}]


# ---- the handlers (plain functions of the runs folder and the page's values) --------------------------

def node_by_name(graph: lineage.Graph, name: Optional[str]) -> Optional[dict]:
    """Only a node of this graph, by its exact name: a page never reaches a path it was not shown."""
    return next((n for n in graph.nodes.values() if n["name"] == name), None) if name else None


def draw(root: Path, score: Optional[str], selected: Optional[str]) -> list[Any]:
    """The figure, the node picker's and the score picker's choices."""
    graph = lineage.scan(root)
    node = node_by_name(graph, selected)
    scores = sorted({k for n in graph.nodes.values() for k in n["scores"]})
    score = score if score in scores else BY_KIND
    names = sorted(n["name"] for n in graph.nodes.values())
    return [tree_figure(graph, score, node["id"] if node else None),
            gr.update(choices=names, value=selected if node else None),
            gr.update(choices=[BY_KIND, *scores], value=score)]


def pick(root: Path, name: Optional[str]) -> list[Any]:
    """The picked node's panel, the run it is (for the tab's run panel) or no change, and the "Chat with it" and
    "Export it" buttons, off where the node cannot be opened there (the panel says why)."""
    graph = lineage.scan(root)
    node = node_by_name(graph, name)
    if node is None:
        off = gr.update(interactive=False)
        return ["Pick a node to open it.", gr.update(), off, off]
    chat, export = chat_target(node), export_target(node, root)
    notes = [f"{what} is off: {why}." for what, why in (("Chat with it", chat), ("Export it", export))
             if isinstance(why, str)]
    return [node_markdown(graph, node) + "".join(f"\n\n{message('info', n)}" for n in notes),
            gr.update(value=node["name"]) if node.get("state") is not None else gr.update(),
            gr.update(interactive=not isinstance(chat, str)), gr.update(interactive=not isinstance(export, str))]


def clicked(root: Path, text: Optional[str]) -> Any:
    """A node clicked in the figure ("NAME\\nCOUNT" from CLICKS_JS): the Node list picks it, then the same handlers
    run as for a pick there."""
    node = node_by_name(lineage.scan(root, sizes=False), (text or "").split("\n")[0])
    return gr.update(value=node["name"]) if node else gr.skip()


def open_in(root: Path, name: Optional[str], tab: str) -> list[Any]:
    """"Chat with it" / "Export it": the tab selected, its model picker and checkpoint set to the node; or a
    notice (the node cannot be opened there), the page staying where it is."""
    node = node_by_name(lineage.scan(root, sizes=False), name)
    if node is None:
        return [gr.update(), gr.update(), gr.update(), message("error", "Pick a node first.")]
    target = chat_target(node) if tab == "chat" else export_target(node, root)
    if isinstance(target, str):
        return [gr.update(), gr.update(), gr.update(), message("error", f"{node['name']}: {target}.")]
    value, tag = target
    if tab == "chat":
        from studio.model_picker import chat_choices

        choices = chat_choices(root)
    else:
        from studio.models import model_sources

        choices = model_sources(root)
    if value not in {v for _, v in choices}:
        choices = [*choices, (node["name"], value)]
    return [gr.Tabs(selected=tab), gr.update(choices=choices, value=value), gr.update(value=tag), ""]


def node_markdown(graph: lineage.Graph, node: dict) -> str:
    parents = ", ".join(f"{p['relation']} **{graph.nodes[p['id']]['name']}**" for p in node["parents"]) or "none"
    children = ", ".join(f"**{graph.nodes[c]['name']}** ({r})" for c, r in graph.children.get(node["id"], [])) or "none"
    lines = [f"**{node['name']}** · {lineage_tree.describe(node)}", f"Came from: {parents}", f"Made from it: {children}"]
    data = node.get("data") or {}
    if data.get("source"):
        lines.append(f"Data: `{data['source']}` (fingerprint `{data.get('fingerprint')}`)")
    if node.get("command"):
        lines.append(f"Made by: `{node['command']}`")
    if node.get("path") and node["kind"] not in lineage.EXTERNAL_KINDS:
        lines.append(f"Folder: `{node['path']}`")
    return "\n\n".join(lines)


def compare_with_parent(root: Path, name: Optional[str]) -> str:
    """One click: the node against its parent on every score both have (what the step cost or gained)."""
    graph = lineage.scan(root)
    node = node_by_name(graph, name)
    if node is None:
        return message("error", "Pick a node first.")
    if not node["parents"]:
        return message("info", f"{node['name']} has no parent to compare with.")
    rows = lineage_tree.score_delta(graph, node["id"])
    if not rows:
        return message("info", f"{node['name']} and its parent share no score yet: evaluate both (Evaluate tab) "
                               "for a report card each.")
    lines = ["| parent | relation | score | parent | this | Δ |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        verdict = {True: " (better)", False: " (worse)", None: ""}[r["better"]]
        lines.append(f"| {r['parent']} | {r['relation']} | {r['score']} | {r['parent_value']:.4g} | {r['value']:.4g} "
                     f"| {r['delta']:+.4g}{verdict} |")
    return "\n".join(lines)


def ask_delete(root: Path, name: Optional[str]) -> list[Any]:
    """The confirmation box: what goes, what was made from it, and the orphan check box when it would orphan."""
    graph = lineage.scan(root)
    node = node_by_name(graph, name)
    if node is None:
        return [gr.update(visible=False), "", gr.update(visible=False, value=False), message("error", "Pick a node.")]
    try:
        plan = lineage_tree.deletion_plan(graph, node["id"])
    except SLMError as error:
        return [gr.update(visible=False), "", gr.update(visible=False, value=False), message("error", str(error))]
    text = f"Delete **{plan['node']}** ({format_bytes(plan['frees_bytes'])})"
    text += f" with {', '.join(plan['removes'])}?" if plan["removes"] else "?"
    if plan["descendants"]:
        text += f" Made from it: {', '.join(plan['descendants'])}."
    if plan["orphans"]:
        text += f" {message('warn', 'It is the only base of ' + ', '.join(plan['orphans']) + ': they would be orphaned.')}"
    return [gr.update(visible=True), text, gr.update(visible=bool(plan["orphans"]), value=False), ""]


def dependents_note(root: Path, name: Optional[str]) -> str:
    """For the Runs tab's own delete box: what was made from the run and what deleting it would orphan."""
    graph = lineage.scan(root, sizes=False)
    node = node_by_name(graph, name)
    if node is None:
        return ""
    plan = lineage_tree.deletion_plan(graph, node["id"])
    made = plan["removes"] + plan["descendants"]
    note = f" Made from it: {', '.join(made)}." if made else ""
    if plan["orphans"]:
        note += " " + message("warn", f"It is the only base of {', '.join(plan['orphans'])}: deleting it is refused "
                                      "here; delete it from the Family tree to confirm orphaning them.")
    return note


def refuse_orphaning(root: Path, name: Optional[str]) -> None:
    """Raise (SLMError, naming them) when deleting run `name` would orphan a descendant's only base."""
    graph = lineage.scan(root, sizes=False)
    node = node_by_name(graph, name)
    plan = lineage_tree.deletion_plan(graph, node["id"]) if node is not None else {"orphans": []}
    if plan["orphans"]:
        raise lineage_tree.orphan_refusal(plan)


def confirm_delete(root: Path, name: Optional[str], orphan: bool) -> str:
    graph = lineage.scan(root)
    node = node_by_name(graph, name)
    if node is None:
        return message("error", "Pick a node.")
    try:
        plan = lineage_tree.delete(graph, node["id"], orphan=bool(orphan))
    except (SLMError, OSError) as error:
        return message("error", str(error))
    return message("ok", f"Deleted {plan['node']}: {format_bytes(plan['frees_bytes'])} freed.")


def cleanup_listing(root: Path) -> str:
    """What can be deleted (slm_core.run.lineage_tree.cleanup_candidates), with the space each frees. Listing only:
    each is deleted by picking it and confirming (or `slm lineage --cleanup --yes`)."""
    found = lineage_tree.cleanup_candidates(lineage.scan(root))
    if not found:
        return message("info", "Nothing to clean up: every artifact is needed or the best of its kind.")
    lines = ["| frees | artifact | why |", "|---:|---|---|"]
    lines += [f"| {format_bytes(c['frees_bytes'])} | {c['name']} | {c['reason']} |" for c in found]
    total = format_bytes(sum(c["frees_bytes"] for c in found))
    return "\n".join(lines) + f"\n\n{total} in all. Nothing is deleted from here: pick one above and delete it."


# ---- the layout inside the Runs tab --------------------------------------------------------------------

def build(ctx, opened) -> None:
    """The family tree accordion; `opened`: the tab's "Open run" picker, set when a run's node is picked."""
    with gr.Accordion("Family tree", open=True, elem_id="lineage"):
        with gr.Row():
            node = gr.Dropdown([], value=None, label="Node", scale=3, elem_id="lineage-node")
            score = gr.Dropdown([BY_KIND], value=BY_KIND, label="Colour by", scale=1, elem_id="lineage-score")
            redraw = gr.Button("Refresh tree", scale=0, min_width=140)
        figure = gr.Plot(tree_figure(lineage.Graph(ctx.runs_dir)), show_label=False, elem_id="lineage-figure")
        hit = gr.Textbox("", visible="hidden", elem_id="lineage-clicked", show_label=False, container=False)
        panel = gr.Markdown("Click a node (or pick it in the Node list) to open it.", elem_id="lineage-panel")
        with gr.Row():
            chat = gr.Button("Chat with it", size="sm", interactive=False, elem_id="lineage-chat")
            export = gr.Button("Export it", size="sm", interactive=False, elem_id="lineage-export")
            compare = gr.Button("Compare with its parent", size="sm", elem_id="lineage-compare")
            delete = gr.Button("Delete this node…", variant="stop", size="sm", elem_id="lineage-delete")
            tidy = gr.Button("What can I delete?", size="sm", elem_id="lineage-cleanup")
        delta = gr.Markdown("", elem_id="lineage-delta")
        with gr.Group(visible=False) as confirm_box:
            confirm_text = gr.Markdown("")
            orphan = gr.Checkbox(False, label="Delete it anyway, orphaning them", visible=False)
            with gr.Row():
                confirm = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="lineage-confirm-delete")
                cancel = gr.Button("Cancel", size="sm")
        result = gr.Markdown("", elem_id="lineage-result")
    tree = [figure, node, score]
    drawing = dict(fn=lambda s, n: draw(ctx.runs_dir, s, n), inputs=[score, node], outputs=tree)
    redraw.click(**drawing, api_name="lineage_tree")
    ctx.tabs["Runs"].select(**drawing, **QUIET)
    ctx.on_load.append(drawing)
    score.input(**drawing, **QUIET)
    opening = dict(fn=lambda n: pick(ctx.runs_dir, n), inputs=node, outputs=[panel, opened, chat, export])
    node.input(**opening, **QUIET).then(**drawing, **QUIET)
    hit.change(lambda n: clicked(ctx.runs_dir, n), hit, node, **QUIET).success(**opening, **QUIET).then(
        **drawing, **QUIET)
    ctx.on_load.append(dict(fn=None, js=CLICKS_JS))
    ctx.finalizers.append(lambda c: _wire_open_in(c, node, chat, export, result))
    compare.click(lambda n: compare_with_parent(ctx.runs_dir, n), node, delta, api_name="lineage_compare")
    tidy.click(lambda: cleanup_listing(ctx.runs_dir), None, delta, **PRIVATE)  # `slm lineage --cleanup` for scripts
    delete.click(lambda n: ask_delete(ctx.runs_dir, n), node, [confirm_box, confirm_text, orphan, result], **QUIET)
    cancel.click(lambda: gr.update(visible=False), None, confirm_box, **QUIET)
    confirm.click(lambda n, o: (gr.update(visible=False), confirm_delete(ctx.runs_dir, n, o)), [node, orphan],
                  [confirm_box, result], **PRIVATE).then(**drawing, **QUIET)


def _wire_open_in(ctx, node, chat, export, result) -> None:
    """After every tab exists: "Chat with it" / "Export it" select that tab with the node picked in it (the
    pickers the Chat and Export tabs share as "chat.model" / "export.model": (model, checkpoint tag))."""
    for button, tab, title in ((chat, "chat", "Chat"), (export, "export", "Export")):
        pickers = ctx.shared.get(f"{tab}.model")
        if pickers is None or title not in ctx.tabs:  # a page built without that tab
            button.visible = False
            continue
        button.click(lambda n, tab=tab: open_in(ctx.runs_dir, n, tab), node,
                     [ctx.tabs[title].parent, *pickers, result], **QUIET)

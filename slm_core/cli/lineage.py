"""`slm lineage`: where an artifact came from and what was made from it (ancestors above, descendants below,
with kind, size and scores); `--json` for scripts; `--cleanup` lists what can go; `--delete` removes one node."""

from __future__ import annotations

import json
from pathlib import Path

from slm_core.cli.flags import add_runs_dir
from slm_core.errors import SLMError
from slm_core.run.lineage import scan
from slm_core.run.lineage_tree import cleanup_candidates, delete, deletion_plan, remove_artifact, render
from slm_core.run.runs import check_runs_dir
from slm_core.system import format_bytes


def add_lineage_parser(sub) -> None:
    parser = sub.add_parser("lineage", help="an artifact's family tree: what it came from and what was made from it")
    parser.add_argument("name", nargs="?", help="run, quantized model, export or Hub id (omit: the whole forest)")
    parser.add_argument("--json", action="store_true", help="nodes and edges as JSON")
    parser.add_argument("--cleanup", action="store_true",
                        help="list what can be deleted (no descendant needs it, something supersedes it)")
    parser.add_argument("--delete", action="store_true", help="delete NAME (refused if it orphans a descendant)")
    parser.add_argument("--orphan", action="store_true", help="with --delete: allow orphaning its descendants")
    parser.add_argument("--yes", action="store_true", help="confirm a deletion (--delete or --cleanup)")
    add_runs_dir(parser)


def cmd_lineage(args) -> int:
    graph = scan(check_runs_dir(args.runs_dir))
    for warning in graph.warnings:
        print(f"warning: {warning}")
    if args.cleanup:
        return _cleanup(graph, args)
    focus = graph.find(args.name)["id"] if args.name else None
    if args.delete:
        return _delete(graph, focus, args)
    if args.json:
        print(json.dumps(graph.to_json(focus), indent=2, default=str))
    elif not graph.nodes:
        print(f"no artifacts in {graph.root} yet: `slm train` starts one")
    else:
        print(render(graph, focus))
    return 0


def _cleanup(graph, args) -> int:
    found = cleanup_candidates(graph)
    if args.json and not args.yes:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("nothing to clean up: every artifact is needed or the best of its kind")
        return 0
    for item in found:
        print(f"{format_bytes(item['frees_bytes']):>10}  {item['name']}  ({item['reason']})")
    total = sum(item["frees_bytes"] for item in found)
    if not args.yes:
        print(f"{format_bytes(total)} in all; nothing deleted: add --yes to delete these")
        return 0
    for item in found:
        remove_artifact(Path(item["path"]), item["kind"])
    print(f"deleted {len(found)} artifacts, {format_bytes(total)} freed")
    return 0


def _delete(graph, focus, args) -> int:
    if focus is None:
        raise SLMError("name the artifact to delete: slm lineage NAME --delete")
    plan = deletion_plan(graph, focus)
    print(f"{plan['node']}: {format_bytes(plan['frees_bytes'])}" +
          (f", with {', '.join(plan['removes'])}" if plan["removes"] else ""))
    if plan["descendants"]:
        print(f"made from it: {', '.join(plan['descendants'])}")
    if plan["orphans"] and not args.orphan:
        delete(graph, focus)  # raises, naming what it would orphan
    if not args.yes:
        print("nothing deleted: add --yes to delete it")
        return 0
    delete(graph, focus, orphan=args.orphan)
    print(f"deleted {plan['node']}")
    return 0

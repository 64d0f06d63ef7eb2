"""`slm runs`: the runs directory as a table."""

from __future__ import annotations

from slm_core.cli.flags import add_runs_dir
from slm_core.run.lineage import scan
from slm_core.run.lineage_tree import render
from slm_core.run.runs import check_runs_dir, list_runs


def add_runs_parser(sub) -> None:
    parser = sub.add_parser("runs", help="list runs")
    parser.add_argument("--tree", action="store_true", help="the whole family tree: every artifact under its parent "
                                                             "(`slm lineage NAME` for one)")
    add_runs_dir(parser)


def cmd_runs(args) -> int:
    if getattr(args, "tree", False):
        graph = scan(check_runs_dir(args.runs_dir))
        print(render(graph) if graph.nodes else "no runs yet: `slm train` starts one")
        return 0
    rows = list_runs(check_runs_dir(args.runs_dir))
    if not rows:
        print("no runs yet: `slm train` starts one")
        return 0
    print(f"{'name':<36}{'state':<10}{'mode':<10}{'step':>12}{'tokens':>12}{'best val':>10}")
    for r in rows:
        best = f"{r['best_val_loss']:.4f}" if r.get("best_val_loss") is not None else "-"
        print(f"{r['name']:<36}{r['state']:<10}{r.get('mode') or '-':<10}"
              f"{str(r['step']) + '/' + str(r.get('max_steps') or '?'):>12}{r['tokens']:>12,}{best:>10}")
    return 0

"""`slm queue`: add, list, reorder and run queued training runs."""

from __future__ import annotations

from slm_core.cli.flags import add_runs_dir
from slm_core.errors import SLMError
from slm_core.run import runs
from slm_core.run.queue import add, entries, move, print_queue, remove, run_queue


def add_queue_parser(sub) -> None:
    parser = sub.add_parser("queue", help="runs waiting for the training slot: list, add, remove, move, run")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "add", "remove", "move", "run"])
    parser.add_argument("name", nargs="?", help="the queued run (remove, move)")
    parser.add_argument("--preset", default="quickstart-cpu", help="recipe to queue (add)")
    parser.add_argument("--name", dest="run_name", help="name of the queued run (add; default <recipe>-<time>)")
    parser.add_argument("--to", type=int, default=0, help="new position, 0 = next (move)")
    add_runs_dir(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")


def cmd_queue(args) -> int:
    root = runs.runs_dir(args.runs_dir)
    if args.action == "add":
        entry = add(root, args.preset, args.overrides, args.run_name)
        print(f"queued {entry['name']} (position {len(entries(root))})")
    elif args.action in ("remove", "move"):
        if not args.name:
            raise SLMError(f"`slm queue {args.action}` needs the queued run's name (`slm queue` lists them)")
        if args.action == "remove":
            print(f"removed {remove(root, args.name)['name']} from the queue")
        else:
            print(f"{args.name} is now at position {move(root, args.name, args.to)}")
    elif args.action == "run":
        return run_queue(root)
    else:
        print_queue(root)
    return 0

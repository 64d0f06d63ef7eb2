"""`slm eval`: perplexity, benchmark tasks, an LLM judge and the report card."""

from __future__ import annotations

import sys
from typing import Optional

from slm_core.cli.flags import add_runs_dir
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.post.evaluate import SPLITS, perplexity
from slm_core.post.judge import judge_pairwise, load_prompts
from slm_core.post.report_card import (
    format_value,
    judge_settings,
    model_card,
    model_replies,
    save_card,
    second_judging,
    to_markdown,
)
from slm_core.run.runs import check_runs_dir
from slm_core.validate import validate_eval


def add_eval_parser(sub) -> None:
    parser = sub.add_parser("eval", help="perplexity of one or more models on a data source")
    parser.add_argument("models", nargs="+", help="run names, checkpoint, quantized or Hugging Face folders")
    parser.add_argument("--data", default=None, help="data source (default: each model's own validation data)")
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--split", default=None, choices=list(SPLITS),
                        help="default: 'val' of the model's own data; 'all' of a --data source")
    parser.add_argument("--stride", type=int, default=None, help="window stride in tokens (default: context/2)")
    parser.add_argument("--max-tokens", type=int, default=None, help="stop after scoring this many tokens")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    add_runs_dir(parser)
    beyond = parser.add_argument_group("beyond perplexity (a report card per model; see slm_core.post.report_card)")
    beyond.add_argument("--tasks", default=None, help="comma-separated benchmark tasks: shipped ones "
                        "(story_ending, opposites, arithmetic), JSONL files of your own, or lm-eval task names")
    beyond.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    beyond.add_argument("--judge", default=None, metavar="URL", help="an OpenAI-compatible endpoint, e.g. "
                        "http://127.0.0.1:8000/v1 (slm serve), http://127.0.0.1:11434/v1 (Ollama)")
    beyond.add_argument("--judge-model", default="", help="the judge's model name (default: the first it lists)")
    beyond.add_argument("--judge-key", default=None, help="API key (default: $OPENAI_API_KEY if set)")
    beyond.add_argument("--judge-prompts", default=None, help="JSONL of prompts (default: held-out built-in instructions)")
    beyond.add_argument("--judge-limit", type=int, default=20, help="how many prompts to judge")
    beyond.add_argument("--judge-seeds", default="0", help="one seed, or two (0,1) to report the agreement of two runs")
    beyond.add_argument("--judge-timeout", type=float, default=60.0, help="seconds to wait for one judge reply")
    beyond.add_argument("--judge-temperature", type=float, default=0.0,
                        help="the judge's sampling temperature (seeds only matter above 0)")
    beyond.add_argument("--pairwise", action="store_true", help="judge two models against each other (A vs B, "
                        "each pair shown in both orders)")
    beyond.add_argument("--card", action="store_true", help="write a report card per model (implied by --tasks/--judge)")


def cmd_eval(args) -> int:
    validate_eval(args.stride, args.max_tokens)
    args.runs_dir = check_runs_dir(args.runs_dir)
    if args.tasks or args.judge or args.card or args.pairwise:
        return cmd_card(args)
    print(f"{'model':<48}{'tokens':>10}{'loss':>9}{'ppl':>10}{'sec':>8}")
    for source in args.models:
        loaded = load_model(source, tag=args.checkpoint, runs_dir=args.runs_dir)
        row = perplexity(loaded, args.data, args.split, args.stride, args.max_tokens, args.text_column)
        print(f"{source[-47:]:<48}{row['tokens']:>10,}{row['loss']:>9.4f}{row['ppl']:>10.3f}{row['seconds']:>8.1f}")
        if row.get("warning"):
            print(f"warning: {row['warning']}", file=sys.stderr)
    return 0


def cmd_card(args) -> int:
    if args.limit is not None and args.limit <= 0:
        raise SLMError(f"--limit must be a positive number of items, got {args.limit}")
    judge = judge_settings(args)
    if args.pairwise:
        return cmd_pairwise(args, judge)
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    cards = []
    for source in args.models:
        card = model_card(source, args.checkpoint, tasks, args.limit, judge, args.max_tokens or 20_000,
                          on_progress=lambda text: print(text, flush=True), runs_dir=args.runs_dir)
        if judge and len(judge["seeds"]) == 2:
            card["judge_agreement"] = second_judging(source, args.checkpoint, judge, card["judge"])
        card["files"] = save_card(card)
        cards.append(card)
    print(to_markdown(cards))
    for card in cards:
        if card.get("judge_agreement"):
            a = card["judge_agreement"]
            print(f"{card['model']}: two judge runs agree exactly on {format_value(a['exact'], '.0%')}, within one point "
                  f"on {format_value(a['within_1'], '.0%')} of {a['pairs']} scores (Spearman {format_value(a['spearman'], '.2f')})")
        print(f"saved {card['files']['json']}")
    return 0


def cmd_pairwise(args, judge: Optional[dict]) -> int:
    if not judge or len(args.models) != 2:
        raise SLMError("--pairwise compares exactly two models with a judge: slm eval A B --pairwise --judge URL")
    items = load_prompts(judge["prompts"], judge["limit"])
    replies = [model_replies(load_model(m, tag=args.checkpoint, runs_dir=args.runs_dir), items, seed=judge["seed"]) for m in args.models]
    pairs = [{"prompt": a["prompt"], "a": a["reply"], "b": b["reply"]} for a, b in zip(*replies)]
    result = judge_pairwise(judge["endpoint"], pairs, seed=judge["seed"])
    result["models"] = {"A": args.models[0], "B": args.models[1]}
    counts = result["counts"]
    print(f"A = {args.models[0]}, B = {args.models[1]}: A wins {counts['A']}, B wins {counts['B']}, "
          f"ties {counts['tie']}, unscored {counts['unscored']} (each pair judged in both orders)")
    return 0

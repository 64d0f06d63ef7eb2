"""`slm data prepare SOURCE`: tokenize a corpus, or one shard i/N of it, ahead of training."""

from __future__ import annotations

import time

from slm_core.config import load_recipe, load_run_config
from slm_core.data.cache import prepare_data, prepare_shard
from slm_core.data.stream import parse_shard


def add_data_parser(sub) -> None:
    parser = sub.add_parser("data", help="prepare token files from a corpus (one shard per machine if asked)")
    actions = parser.add_subparsers(dest="data_command", required=True)
    prepare = actions.add_parser("prepare", help="tokenize SOURCE once into memory-mapped token files")
    prepare.add_argument("source", help="a file, folder, 'builtin', or a Hub dataset name")
    recipe = prepare.add_mutually_exclusive_group()
    recipe.add_argument("--preset", default="quickstart-cpu", help="recipe whose tokenizer and data settings apply")
    recipe.add_argument("--config", help="a recipe YAML file instead of a preset")
    prepare.add_argument("--shard", help="i/N: prepare only shard i of N (0-based), e.g. 3/8")
    prepare.add_argument("--out", help="folder for shards (default: the token cache runs read)")
    prepare.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: every core)")
    prepare.add_argument("--cache-dir", default=None, help="token cache root (default: $SLM_CACHE_DIR or ~/.cache)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a setting, e.g. --set tokenizer.kind=gpt2 (repeatable)")


def cmd_data(args) -> int:
    overrides = list(args.overrides) + [f"data.source={args.source}"]
    config = (load_run_config(args.config).with_overrides(overrides) if args.config
              else load_recipe(args.preset, overrides))
    shard = parse_shard(args.shard)
    started = time.perf_counter()
    if args.out or shard:
        data = prepare_shard(config, shard or (0, 1), args.out or ".", progress=not args.quiet,
                             workers=args.workers, cache_dir=args.cache_dir)
    else:
        data = prepare_data(config, cache_dir=args.cache_dir, progress=not args.quiet, require_windows=False,
                            workers=args.workers)
    meta, seconds = data.meta, time.perf_counter() - started
    tokens = data.train_tokens + data.val_tokens
    print(f"{meta.get('n_documents', 0):,} documents, {data.n_chars:,} characters -> {data.train_tokens:,} train + "
          f"{data.val_tokens:,} validation tokens ({data.tokenizer.kind}, {data.tokenizer.n_vocab:,} ids, "
          f"{meta['dtype']}) in {seconds:.1f} s [{tokens / max(seconds, 1e-9) / 1e6:.2f}M tokens/s]")
    print(f"tokens in: {data.cache_dir}")
    return 0

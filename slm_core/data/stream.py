"""Documents as a stream: any source read one document at a time in bounded memory, optionally only shard i/N
of it; `DocStream` applies the caps."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Iterator, Optional

from slm_core.config import DataConfig
from slm_core.data.arithmetic import arithmetic_documents
from slm_core.data.corpus import iter_instructions, iter_stories
from slm_core.data.sources import (
    OFFLINE_HINT,
    TABULAR_SUFFIXES,
    _as_text,
    _data_files,
    _instruction_record,
    _load_saved,
    _pick_split,
    _root_cause,
    hub_offline_reason,
    load_tabular,
    pick_column,
    source_kind,
)
from slm_core.data.text import iter_text_file
from slm_core.errors import SLMError

BUILTIN_CHARS = 6_000_000  # the built-in stories' size unless data.max_chars says otherwise
INSTRUCTIONS = 4000  # records in 'builtin:instructions'


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'i/N' → (i, N) with 0 <= i < N; None for no sharding."""
    if text in (None, ""):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise SLMError(f"--shard {text!r} is invalid: write i/N with 0 <= i < N, e.g. --shard 0/8")
    return int(match.group(1)), int(match.group(2))


def _span(total: int, shard: Optional[tuple[int, int]]) -> tuple[int, int]:
    if shard is None:
        return 0, max(total, 1)
    i, n = shard
    return total * i // n, total * (i + 1) // n


# ---- the stream -------------------------------------------------------------------------------------

class DocStream:
    """Iterate a source's documents (str, or record dicts for instruction data) within its caps.

    After (or during) iteration: kind, columns, is_instruction, n_documents, n_chars. `total_bytes`
    is the local source's size for progress bars (None for the Hub)."""

    def __init__(self, cfg: DataConfig, shard: Optional[tuple[int, int]] = None, limit: Optional[int] = None,
                 hf_cache: Optional[Path] = None):
        self.cfg, self.shard, self.hf_cache = cfg, shard, hf_cache
        self.limit = min(x for x in (limit, cfg.max_documents, 1 << 62) if x is not None)
        self.kind, self.detail = source_kind(cfg.source)
        self.columns: Optional[list] = None
        self.is_instruction: Optional[bool] = None
        self.n_documents = self.n_chars = 0
        self.total_bytes = _local_bytes(self.detail) if isinstance(self.detail, Path) else None

    def __iter__(self) -> Iterator:
        max_chars = self.cfg.max_chars
        for item in self._raw():
            if self.n_documents >= self.limit or (max_chars is not None and self.n_chars >= max_chars):
                return
            if isinstance(item, str):
                if not item.strip():
                    continue
                if max_chars is not None:
                    item = item[:max_chars - self.n_chars]
                self.n_chars += len(item)
            else:
                self.n_chars += sum(len(str(v)) for v in item.values() if v is not None)
            self._check_kind(item)
            self.n_documents += 1
            yield item

    def _check_kind(self, item) -> None:
        is_record = isinstance(item, dict)
        if self.is_instruction is None:
            self.is_instruction = is_record
        elif self.is_instruction != is_record:
            raise SLMError(f"{self.cfg.source} mixes plain text with instruction records; put them in separate "
                           "folders and train on one kind at a time")

    def _raw(self) -> Iterator:
        kind, detail, cfg = self.kind, self.detail, self.cfg
        if kind == "builtin":
            yield from _builtin_stories(cfg.max_chars or BUILTIN_CHARS, self.shard)
        elif kind == "builtin:instructions":
            self.columns = ["instruction", "input", "output"]
            yield from itertools.islice(iter_instructions(seed=0, n=INSTRUCTIONS), *_span(INSTRUCTIONS, self.shard))
        elif kind == "builtin:arithmetic":
            documents = arithmetic_documents()
            yield from documents[slice(*_span(len(documents), self.shard))]
        elif kind == "text":
            lo, hi = _span(detail.stat().st_size, self.shard)
            yield from (text for _, text in iter_text_file(detail, cfg.split, lo, hi))
        elif kind == "folder":
            yield from self._folder(detail)
        elif kind == "hub":
            yield from self._hub(detail)
        else:
            dataset = _load_saved(detail, cfg) if kind == "saved" else load_tabular(detail, self.hf_cache)
            yield from self._rows(dataset, str(detail), self.shard)

    def _folder(self, folder: Path) -> Iterator:
        files = _data_files(folder)
        if not files:
            raise SLMError(f"the folder {folder} has no .txt, .md, .jsonl, .json, .csv or .parquet files: "
                           "add some, or point data.source at a file")
        lo, hi = _span(sum(_local_bytes(p) for p in files), self.shard)
        base = 0
        for path in files:
            size, start = _local_bytes(path), base
            base += size
            if path.is_dir() or path.suffix.lower() in TABULAR_SUFFIXES:
                if lo <= start < hi:  # a table belongs whole to the shard where it starts
                    dataset = _load_saved(path, self.cfg) if path.is_dir() else load_tabular(path, self.hf_cache)
                    yield from self._rows(dataset, str(path), None)
            elif start + size > lo and start < hi:
                yield from (text for _, text in iter_text_file(path, self.cfg.split, lo - start, hi - start))

    def _rows(self, dataset, where: str, shard) -> Iterator:
        columns = list(dataset.column_names or [])
        self.columns = columns
        column = pick_column(dataset, columns, self.cfg.text_column, where)
        if shard is not None:
            dataset = dataset.select(range(*_span(len(dataset), shard)))
        for batch in dataset.iter(batch_size=1000):
            yield from _batch_items(batch, column, where)

    def _hub(self, name: str) -> Iterator:
        dataset = open_hub_stream(name, self.cfg)
        if self.shard is not None:  # a stream is sharded by its files: contiguous groups of them
            files = getattr(dataset, "num_shards", None) or 1
            if files < self.shard[1]:
                raise SLMError(f"the Hub dataset {name!r} is stored in {files} files, too few for {self.shard[1]} "
                               f"shards: use --shard i/N with N <= {files}")
            dataset = dataset.shard(num_shards=self.shard[1], index=self.shard[0])
        column = None
        for batch in dataset.iter(batch_size=1000):
            if self.columns is None:  # a stream names its columns only in its first batch
                self.columns = list(batch)
                column = pick_column(None, self.columns, self.cfg.text_column, name, batch)
            yield from _batch_items(batch, column, name)


def _batch_items(batch: dict, column: Optional[str], where: str) -> Iterator:
    if column is None:
        for values in zip(*batch.values()):
            yield _instruction_record(dict(zip(batch, values)))
    else:
        yield from (_as_text(v, column, where) for v in batch[column] if v is not None)


def _builtin_stories(n_chars: int, shard) -> Iterator[str]:
    lo, hi = _span(n_chars, shard)
    position = 0  # characters before this story: a story belongs to the shard where it starts
    for text in iter_stories(seed=0):
        if position >= min(hi, n_chars):
            return
        if position >= lo:
            yield text
        position += len(text)


def _local_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def open_hub_stream(name: str, cfg: DataConfig):
    """A Hub dataset in streaming mode (nothing downloaded whole); offline: SLMError within seconds."""
    reason = hub_offline_reason()
    if reason:
        raise SLMError(f"{name!r} is no local file or folder, and as a Hub dataset it cannot be downloaded "
                       f"({reason}); {OFFLINE_HINT}")
    import datasets

    repo, _, subset = name.partition(":")
    try:
        dataset = datasets.load_dataset(repo, subset or None, streaming=True)
        return _pick_split(dataset, cfg.hub_split, name) if isinstance(dataset, datasets.IterableDatasetDict) \
            else dataset
    except SLMError:
        raise
    except Exception as e:
        raise SLMError(f"could not load the Hub dataset {name!r} split {cfg.hub_split!r}: {_root_cause(e)}; "
                       f"check the name and split (data.hub_split), or {OFFLINE_HINT}") from None

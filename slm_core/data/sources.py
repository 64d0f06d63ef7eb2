"""Where documents come from (built-in corpora, text files, folders, JSONL/JSON/CSV/Parquet, saved and Hub
datasets), read as strings or instruction records; `source_identity` names a source without reading it."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from slm_core import allowlist
from slm_core.allowlist import readable
from slm_core.config import DataConfig
from slm_core.data.arithmetic import arithmetic_documents
from slm_core.data.corpus import builtin_instructions, builtin_stories
from slm_core.data.text import iter_text_file
from slm_core.errors import SLMError
from slm_core.validate import explain_json_error, quiet_logger

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".rst")
TABULAR_SUFFIXES = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
                    ".parquet": "parquet"}
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
OFFLINE_HINT = ("use a local source instead: a .txt/.md file, a folder of them, a JSONL/CSV/Parquet file, "
                "a save_to_disk folder, 'builtin' (built-in stories) or 'builtin:instructions'")
BATCH_ROWS = 1000


@dataclass
class Documents:
    """What a source holds: `items` are strings (plain text) or record dicts (instruction data)."""
    kind: str  # builtin | builtin:instructions | text | folder | tabular | saved | hub
    items: list
    is_instruction: bool = False
    columns: Optional[list] = None
    n_chars: int = 0


# ---- classifying a source ------------------------------------------------------------------

def source_kind(source: str) -> tuple[str, Any]:
    """(kind, detail): detail is a resolved Path for local sources, the name for the others."""
    source = str(source).strip()
    if source in ("builtin", "builtin:stories"):
        return "builtin", source
    if source in ("builtin:instructions", "builtin:arithmetic"):
        return source, source
    if source == "builtin:preferences":
        raise SLMError("builtin:preferences holds preference pairs, not running text: a train.mode=dpo or orpo run "
                       "renders and caches them itself; to tokenize text here use 'builtin' or a file")
    if source.startswith("builtin"):
        raise SLMError(f"unknown built-in corpus {source!r}: use 'builtin', 'builtin:instructions' or "
                       "'builtin:arithmetic'")
    path = Path(source).expanduser()
    hub_shaped = bool(HUB_NAME.match(source)) and path.suffix.lower() not in TEXT_SUFFIXES + tuple(TABULAR_SUFFIXES)
    if hub_shaped and allowlist.refuses(path):
        return "hub", source  # a confined process never looks at a local path it may not read
    if readable(path).exists():
        path = path.resolve()
        if path.is_dir():
            return ("saved" if _is_saved_dataset(path) else "folder"), path
        return ("tabular" if path.suffix.lower() in TABULAR_SUFFIXES else "text"), path
    if hub_shaped:
        return "hub", source
    raise SLMError(f"data source {source!r} not found (looked for {path.resolve()}): give an existing file or "
                   "folder, 'builtin', 'builtin:instructions', or a Hugging Face dataset name like owner/name")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (
        (path / "state.json").exists() and (path / "dataset_info.json").exists())


def _walk(folder: Path, saved_as_one: bool = False) -> list[Path]:
    """Files under `folder`, recursive, sorted, hidden ones skipped. saved_as_one: a save_to_disk
    folder inside is listed as one entry (its JSON metadata is not data)."""
    found = []
    for root, dirs, names in os.walk(folder):
        if saved_as_one and Path(root) != folder and _is_saved_dataset(Path(root)):
            found.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return found


def _data_files(folder: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES + tuple(TABULAR_SUFFIXES)
    return [p for p in _walk(folder, saved_as_one=True) if p.is_dir() or p.suffix.lower() in suffixes]


def source_identity(cfg: DataConfig) -> dict:
    """A cheap description that changes whenever the source's content may have changed."""
    kind, detail = source_kind(cfg.source)
    ident: dict = {"kind": kind}
    if kind in ("builtin", "builtin:instructions", "builtin:arithmetic"):
        import slm_core.data.arithmetic as arithmetic
        import slm_core.data.corpus as corpus

        # The generator's own code is part of the identity: a new corpus version means new tokens.
        code = (arithmetic if kind == "builtin:arithmetic" else corpus).__file__
        ident.update(name=kind, seed=0, code=hashlib.sha1(Path(code).read_bytes()).hexdigest()[:16])
    elif kind == "hub":
        ident.update(name=detail, split=cfg.hub_split)
    else:
        files = [detail] if detail.is_file() else _walk(detail)  # every file: cheap stats, never stale
        ident["path"] = str(detail)
        ident["files"] = [[str(p.relative_to(detail)) if p != detail else p.name, p.stat().st_size,
                           p.stat().st_mtime_ns] for p in files]
    return ident


# ---- reading ---------------------------------------------------------------------------------

def read_documents(cfg: DataConfig, limit: Optional[int] = None, hf_cache: Optional[Path] = None) -> Documents:
    """All documents of a source (or the first `limit`), capped at cfg.max_chars characters."""
    kind, detail = source_kind(cfg.source)
    cap = _Cap(cfg.max_chars, limit)
    if kind == "builtin":
        docs = Documents(kind, cap.take(builtin_stories(n_chars=cfg.max_chars or 6_000_000, seed=0)))
    elif kind == "builtin:instructions":
        docs = Documents(kind, cap.take(builtin_instructions(seed=0)), columns=["instruction", "input", "output"])
    elif kind == "builtin:arithmetic":
        docs = Documents(kind, cap.take(arithmetic_documents()))
    elif kind == "text":
        docs = Documents(kind, cap.take(read_text_file(detail, cap.remaining_chars(), cfg.split)))
    elif kind == "folder":
        docs = _read_folder(detail, cfg, cap, hf_cache)
    elif kind == "hub":
        docs = _read_hub(detail, cfg, cap)
    else:
        if kind == "saved":
            items, columns = records_from_dataset(_load_saved(detail, cfg), cfg.text_column, cap, str(detail))
        else:
            items, columns = _tabular_records(detail, cfg, cap, hf_cache)
        docs = Documents(kind, items, columns=columns)
    docs.is_instruction = _check_uniform(docs.items, cfg.source)
    docs.n_chars = cap.chars
    if not docs.items:
        raise SLMError(f"the data source {cfg.source!r} holds no text: point data.source at a non-empty "
                       "file or folder, or use 'builtin'")
    return docs


class _Cap:
    """Counts characters and documents taken; stops at max_chars / limit (the last text is cut)."""

    def __init__(self, max_chars: Optional[int], limit: Optional[int]):
        self.max_chars, self.limit, self.chars, self.count = max_chars, limit, 0, 0

    def remaining_chars(self) -> Optional[int]:
        return None if self.max_chars is None else max(0, self.max_chars - self.chars)

    @property
    def full(self) -> bool:
        return (self.limit is not None and self.count >= self.limit) or (
            self.max_chars is not None and self.chars >= self.max_chars)

    def take(self, items: Iterable) -> list:
        taken = []
        for item in items:
            if self.full:
                break
            if isinstance(item, str):
                if not item.strip():
                    continue
                left = self.remaining_chars()
                item = item if left is None else item[:left]
            taken.append(item)
            self.count += 1
            self.chars += len(item) if isinstance(item, str) else _record_chars(item)
        return taken


def _record_chars(record: dict) -> int:
    return sum(len(str(v)) for v in record.values() if v is not None)


def _check_uniform(items: list, source: str) -> bool:
    kinds = {isinstance(item, dict) for item in items}
    if len(kinds) > 1:
        raise SLMError(f"{source} mixes plain text with instruction records; put them in separate folders "
                       "and train on one kind at a time")
    return kinds == {True}


def read_text_file(path: Path, max_chars: Optional[int] = None, split: str = "paragraph") -> list[str]:
    """One text file as documents, split as data.split says (see slm_core.data.stream), reading only
    as far as `max_chars` characters need."""
    docs, chars = [], 0
    for _, text in iter_text_file(path, split):
        if max_chars is not None and chars >= max_chars:
            break
        docs.append(text)
        chars += len(text)
    return docs


def _read_folder(folder: Path, cfg: DataConfig, cap: _Cap, hf_cache: Optional[Path]) -> Documents:
    files = _data_files(folder)
    if not files:
        raise SLMError(f"the folder {folder} has no .txt, .md, .jsonl, .json, .csv or .parquet files: "
                       "add some, or point data.source at a file")
    items, columns = [], None
    for path in files:
        if cap.full:
            break
        if path.is_dir():
            records, columns = records_from_dataset(_load_saved(path, cfg), cfg.text_column, cap, str(path))
            items.extend(records)
        elif path.suffix.lower() in TABULAR_SUFFIXES:
            records, columns = _tabular_records(path, cfg, cap, hf_cache)
            items.extend(records)
        else:
            items.extend(cap.take(read_text_file(path, cap.remaining_chars(), cfg.split)))
    return Documents("folder", items, columns=columns)


# ---- datasets-backed sources ------------------------------------------------------------------

def load_tabular(path: Path, hf_cache: Optional[Path] = None):
    """A JSONL/JSON/CSV/Parquet file as a datasets.Dataset (read offline in milliseconds)."""
    import datasets

    builder = TABULAR_SUFFIXES[path.suffix.lower()]
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    _check_not_binary(path, builder)

    try:
        with quiet_logger("datasets"):  # it logs a parse failure with a traceback; the SLMError below says it
            return datasets.load_dataset(builder, data_files=[str(path)], split="train",
                                         cache_dir=str(hf_cache) if hf_cache else None, **kwargs)
    except Exception as e:  # datasets wraps parse errors in several types; all mean "fix the file"
        # explain_json_error names the bad line, not datasets' offset inside a parse block

        reason = explain_json_error(path) if builder == "json" else None
        if reason:
            raise SLMError(reason) from None
        raise SLMError(f"could not read {path} as {path.suffix[1:].upper()}: {_root_cause(e)}; "
                       "check the file is valid UTF-8 and well formed") from None


def _check_not_binary(path: Path, builder: str) -> None:
    if builder == "parquet":
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"\x00" in head:
        raise SLMError(f"{path} looks binary (it contains NUL bytes): give a UTF-8 {path.suffix[1:].upper()} file")


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"[:300]


def _load_saved(path: Path, cfg: DataConfig):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        raise SLMError(f"could not load the saved dataset at {path}: {_root_cause(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(loaded, cfg.hub_split, str(path))
    return loaded


def _pick_split(dataset_dict, split: str, where: str):
    if split in dataset_dict:
        return dataset_dict[split]
    if "train" in dataset_dict:
        return dataset_dict["train"]
    if len(dataset_dict) == 1:
        return next(iter(dataset_dict.values()))
    raise SLMError(f"{where} has no split {split!r}; set data.hub_split to one of {list(dataset_dict)}")


def records_from_dataset(dataset, text_column: Optional[str], cap: _Cap, where: str) -> tuple[list, list]:
    """Texts (or instruction records) from a Dataset/IterableDataset, read in batches until the cap."""
    columns = list(dataset.column_names or [])
    return records_from_batches(dataset.iter(batch_size=BATCH_ROWS), columns, text_column, cap, where, dataset)


def records_from_batches(batches: Iterable[dict], columns: list, text_column: Optional[str], cap: _Cap,
                         where: str, dataset=None) -> tuple[list, list]:
    """Batches are {column: [values]}; `columns` may be empty when only the first batch knows them."""
    column = pick_column(dataset, columns, text_column, where) if columns else text_column
    items = []
    for batch in batches:
        if not columns:  # a streamed Hub dataset names its columns only in its first batch
            columns = list(batch)
            column = pick_column(None, columns, text_column, where, batch)
        if column is None:
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            items.extend(cap.take(_instruction_record(r) for r in rows))
        else:
            items.extend(cap.take(_as_text(v, column, where) for v in batch[column] if v is not None))
        if cap.full:
            break
    return items, columns


def peek_tabular(path: Path, n: int) -> dict:
    """The first n rows of a JSONL/CSV/Parquet file as {column: [values]}, without reading the rest."""
    suffix = path.suffix.lower()
    _check_not_binary(path, TABULAR_SUFFIXES[suffix])
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(path).iter_batches(batch_size=max(1, n)), None)
            return batch.to_pydict() if batch is not None else {}
        with open(path, encoding="utf-8", newline="") as f:
            if suffix in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = [row for _, row in zip(range(n), reader)]
            elif f.read(1 << 12).lstrip().startswith("["):  # one JSON array: no way to read part of it
                return {}
            else:
                f.seek(0)
                rows = [json.loads(line) for line in itertools.islice((l for l in f if l.strip()), n)]
    except (UnicodeDecodeError, ValueError, csv.Error) as e:
        raise SLMError(f"could not read {path}: {_root_cause(e)}; check the file is valid UTF-8 and well formed") from None
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {c: [row.get(c) for row in rows] for c in columns}


def _tabular_records(path: Path, cfg: DataConfig, cap: _Cap, hf_cache: Optional[Path]) -> tuple[list, list]:
    """Records of one tabular file; a preview (cap.limit set) reads only the first rows."""
    if cap.limit is not None:
        batch = peek_tabular(path, cap.limit)
        if batch:
            return records_from_batches([batch], list(batch), cfg.text_column, cap, str(path))
    return records_from_dataset(load_tabular(path, hf_cache), cfg.text_column, cap, str(path))


def pick_column(dataset, columns: list, text_column: Optional[str], where: str, batch=None) -> Optional[str]:
    """The text column to read, or None for instruction records (Alpaca or chat messages)."""
    if text_column is not None:
        if text_column not in columns:
            raise SLMError(f"{where} has no column {text_column!r}; its columns are {columns}: "
                           "set data.text_column to one of them")
        return text_column
    if {"instruction", "output"} <= set(columns) or "messages" in columns:
        return None
    if "text" in columns:
        return "text"
    for name in columns:
        if _is_string_column(dataset, batch, name):
            return name
    raise SLMError(f"{where} has no text column (columns: {columns}); set data.text_column to the column "
                   "holding the text")


def _is_string_column(dataset, batch, name: str) -> bool:
    if dataset is not None and getattr(dataset, "features", None):
        return getattr(dataset.features.get(name), "dtype", None) in ("string", "large_string")
    values = [v for v in (batch or {}).get(name, []) if v is not None]
    # CSV rows read directly are all strings: a column of numbers is not the text
    return bool(values) and all(isinstance(v, str) for v in values) and not all(_is_number(v) for v in values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_text(value: Any, column: str, where: str) -> str:
    if isinstance(value, str):
        return value
    raise SLMError(f"column {column!r} of {where} holds {type(value).__name__} values, not text: "
                   "set data.text_column to a text column")


def _instruction_record(row: dict) -> dict:
    if "messages" in row and row["messages"] is not None:
        return {"messages": list(row["messages"])}
    return {k: row.get(k) for k in ("instruction", "input", "output")}


# ---- the Hub -------------------------------------------------------------------------------------

def hub_offline_reason(timeout: float = 3.0) -> Optional[str]:
    """Why the Hub cannot be reached now, or None. Never waits more than ~`timeout` seconds."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    outcome: list = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"huggingface.co is unreachable ({type(e).__name__})")

    # The name lookup ignores socket timeouts and can hang far longer: probe in a thread and stop waiting.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"huggingface.co did not answer within {timeout:.0f} s"


def _read_hub(name: str, cfg: DataConfig, cap: _Cap) -> Documents:
    reason = hub_offline_reason()
    if reason:
        raise SLMError(f"{name!r} is no local file or folder, and as a Hub dataset it cannot be downloaded "
                       f"({reason}); {OFFLINE_HINT}")
    import datasets

    repo, _, subset = name.partition(":")
    # With max_chars (or a preview limit) stream the first rows instead of downloading everything.
    streaming = cap.max_chars is not None or cap.limit is not None
    try:
        dataset = datasets.load_dataset(repo, subset or None, split=cfg.hub_split, streaming=streaming)
    except Exception as e:
        raise SLMError(f"could not load the Hub dataset {name!r} split {cfg.hub_split!r}: {_root_cause(e)}; "
                       f"check the name and split (data.hub_split), or {OFFLINE_HINT}") from None
    items, columns = records_from_dataset(dataset, cfg.text_column, cap, name)
    return Documents("hub", items, columns=columns)

"""The token cache: documents tokenized once into memory-mapped files under a fingerprint of source, settings
and tokenizer; shards; batch sampling (`PreparedData`). Formats: docs/engine-notes.md."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from slm_core.config import DataConfig, RunConfig, TokenizerConfig
from slm_core.data.prepare import build_token_files
from slm_core.data.sources import Documents, read_documents, source_identity
from slm_core.data.stream import DocStream
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_bytes, commit
from slm_core.models.templates import (
    default_template,
    model_prompt_response,
    split_prompt_response,
)
from slm_core.models.tokenizer import Tokenizer, build_tokenizer

if TYPE_CHECKING:  # the Studio previews and tokenizes without loading torch
    import torch

FORMAT_VERSION = 2  # 2: streamed chunks, documents split by content hash, text files split into documents
ALIAS_FILE = "alias.json"
TOKENIZER_DIR = "tokenizer"
SUMMARY_SECONDS = 20.0  # data_summary counts for at most this long, then reports a lower bound


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    root = cache_dir or os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slm-studio" / "data"
    return Path(root).expanduser()


def token_dtype(n_vocab: int):
    """uint16 holds ids below 65,536 (half the disk and page cache of uint32)."""
    return np.uint16 if n_vocab <= 65536 else np.uint32


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---- documents → training examples ------------------------------------------------------------

def resolve_template(docs: Documents, cfg: DataConfig) -> Optional[str]:
    """The template instruction data trains with (None for plain text, where it does not apply)."""
    if not docs.is_instruction:
        return None
    return cfg.template or default_template(docs.items[0])


def examples_of(docs: Documents, template: Optional[str]) -> list:
    """Plain text: the strings. Instruction data: (prompt, response) pairs in `template`."""
    if not docs.is_instruction:
        return docs.items
    return [split_prompt_response(record, template) for record in docs.items]


def _read(cfg: DataConfig, limit: Optional[int] = None, root: Optional[Path] = None) -> tuple[Documents, list]:
    docs = read_documents(cfg, limit=limit, hf_cache=cache_root(root) / "hf-datasets")
    return docs, examples_of(docs, resolve_template(docs, cfg))


def load_texts(data_cfg: DataConfig) -> list[str]:
    """Every document as text (instruction records rendered in their template, prompt + answer)."""
    _, examples = _read(data_cfg)
    return [e if isinstance(e, str) else e[0] + e[1] for e in examples]


def preview(data_cfg: DataConfig, n: int = 5, width: int = 400) -> list[str]:
    """The first n documents, cut to about `width` characters; reads only the start of the source.

    Instruction records show the start and end of the prompt, then the answer.
    """
    cfg = dataclasses.replace(data_cfg, max_chars=min(data_cfg.max_chars or 1 << 62, max(20_000, n * width * 4)))
    _, examples = _read(cfg, limit=n)
    if examples and not isinstance(examples[0], str):
        return [_clip(p, width, keep_end=60) + _clip(r, width) for p, r in examples[:n]]
    texts = examples
    if len(texts) == 1:  # one long document (a novel, a play): show its first paragraphs instead
        texts = [p for p in texts[0].split("\n\n") if p.strip()] or texts
    return [_clip(t, width) for t in texts[:n]]


def _clip(text: str, width: int, keep_end: int = 0) -> str:
    if len(text) <= width:
        return text
    head = text[:width - keep_end].rstrip() + " …"
    return head + (" " + text[-keep_end:].lstrip() if keep_end else "")


def data_summary(data_cfg: DataConfig, max_seconds: float = SUMMARY_SECONDS) -> dict:
    """Size and shape of a source, counted by streaming it (bounded memory): kind, n_documents, n_chars,
    columns, is_instruction, template; `complete` is False when counting stopped after max_seconds."""
    stream, first, complete = DocStream(data_cfg), None, True
    started = time.perf_counter()
    if stream.kind == "hub":  # a stream over the network: a first impression, not the whole dataset
        max_seconds = min(max_seconds, 5.0)
    for item in stream:
        first = item if first is None else first
        if time.perf_counter() - started > max_seconds:
            complete = False
            break
    if first is None:
        raise SLMError(f"the data source {data_cfg.source!r} holds no text: point data.source at a non-empty "
                       "file or folder, or use 'builtin'")
    template = (data_cfg.template or default_template(first)) if stream.is_instruction else None
    return {"source": data_cfg.source, "kind": stream.kind, "n_documents": stream.n_documents,
            "n_chars": stream.n_chars, "columns": stream.columns, "is_instruction": bool(stream.is_instruction),
            "template": template, "complete": complete, "bytes": stream.total_bytes}


def iter_examples(cfg: DataConfig, template: Optional[str], stream: DocStream, tokenizer=None) -> Iterator:
    """The stream's documents as training examples: strings, or (prompt, response) pairs.
    template 'model': rendered by the tokenizer's own chat template (slm_core.models.templates)."""
    for item in stream:
        if isinstance(item, str):
            yield item
        else:
            yield model_prompt_response(item, tokenizer) if template == "model" else split_prompt_response(item, template)


def _first_template(cfg: DataConfig, root: Path) -> Optional[str]:
    """The template the data trains with, from the first document only."""
    stream = DocStream(cfg, limit=1, hf_cache=root / "hf-datasets")
    first = next(iter(stream), None)
    if first is None:
        raise SLMError(f"the data source {cfg.source!r} holds no text: point data.source at a non-empty "
                       "file or folder, or use 'builtin'")
    return (cfg.template or default_template(first)) if isinstance(first, dict) else None


# ---- the tokenizer ---------------------------------------------------------------------------------

def _tokenizer_for(tok_cfg: TokenizerConfig, cfg: DataConfig, root: Path, progress: bool):
    """The tokenizer config asks for; a vocabulary trained on this source is reused from the cache."""
    if tok_cfg.kind == "gpt2" or tok_cfg.path:
        return build_tokenizer(tok_cfg, None, progress=progress)
    key = _digest({"source": source_identity(cfg), "text_column": cfg.text_column, "template": cfg.template,
                   "max_chars": cfg.max_chars, "hub_split": cfg.hub_split, "split": cfg.split,
                   "max_documents": cfg.max_documents, "tokenizer": dataclasses.asdict(tok_cfg)})
    directory = root / "tokenizers" / key
    if directory.is_dir():
        with contextlib.suppress(Exception):  # unreadable: train it again below
            return Tokenizer.load(directory)
    tokenizer = build_tokenizer(tok_cfg, _training_sample(cfg, tok_cfg.train_chars, root, progress),
                                progress=progress)
    tmp = directory.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        commit(tmp, directory)  # a folder appears complete or not at all
    except OSError:  # another process published the same vocabulary first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


def _training_sample(cfg: DataConfig, train_chars: int, root: Path, progress: bool) -> Iterator[str]:
    """The first `train_chars` characters of the corpus as texts, streamed (never held whole)."""
    from tqdm.auto import tqdm

    stream = DocStream(cfg, hf_cache=root / "hf-datasets")
    template = _first_template(cfg, root)
    total = min(train_chars, stream.total_bytes or train_chars)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="reading the tokenizer sample",
              disable=not progress) as bar:
        taken = 0
        for example in iter_examples(cfg, template, stream):
            text = example if isinstance(example, str) else example[0] + example[1]
            yield text
            taken += len(text)
            bar.update(min(len(text), max(0, total - bar.n)))
            if taken >= train_chars:
                return


# ---- prepare ------------------------------------------------------------------------------------

def prepare_data(config: RunConfig, tokenizer=None, cache_dir=None, progress: bool = True, *,
                 require_windows: bool = True, workers: Optional[int] = None) -> "PreparedData":
    """Tokenize config.data once (cached) and return the memory-mapped splits.

    tokenizer: None builds one from config.tokenizer (training a BPE/char vocabulary on the source
    the first time). require_windows: check that each split holds one model.context_length window + 1
    (training needs it; perplexity on a short file does not). workers: tokenizing processes (all cores).
    A data.source that is a folder written by `slm data prepare` is read as it is.
    """
    cfg, root = config.data, cache_root(cache_dir)
    folder = token_folder(cfg.source)
    if folder is not None:
        data = open_token_folder(folder, tokenizer)
    else:
        if tokenizer is None:
            tokenizer = _tokenizer_for(config.tokenizer, cfg, root, progress)
        identity = source_identity(cfg)
        asked = _fingerprint(identity, cfg, cfg.template, tokenizer)
        data = PreparedData.open(root / asked, tokenizer)
        if data is None:
            # Keyed by the template actually used, so a run's saved config (template filled in) finds
            # the tokens its first start wrote; an alias remembers where the asked-for key led.
            template = _first_template(cfg, root)
            real = _fingerprint(identity, cfg, template, tokenizer)
            data = _build_cache(cfg, template, tokenizer, root / real, root, progress, workers)
            if real != asked:
                (root / asked).mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(root / asked / ALIAS_FILE, json.dumps({"fingerprint": real}).encode())
    if require_windows:
        data.check_windows(config.model.context_length)
    return data


def _fingerprint(identity: dict, cfg: DataConfig, template: Optional[str], tokenizer) -> str:
    fields = {"format": FORMAT_VERSION, "source": identity, "text_column": cfg.text_column,
              "template": template, "val_fraction": cfg.val_fraction, "max_chars": cfg.max_chars,
              "hub_split": cfg.hub_split, "split": cfg.split, "max_documents": cfg.max_documents,
              "max_tokens": cfg.max_tokens, "tokenizer": tokenizer.fingerprint()}
    if template == "model":  # a base and its instruct model share a vocabulary, not always a chat template
        fields["chat_template"] = _digest(getattr(tokenizer, "chat_template", None))
    return _digest(fields)


@contextlib.contextmanager
def _locked(directory: Path):
    """One preparer per cache folder (other processes wait, then find the finished cache)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_cache(cfg: DataConfig, template: Optional[str], tokenizer, directory: Path, root: Path,
                 progress: bool, workers: Optional[int], shard: Optional[tuple[int, int]] = None) -> "PreparedData":
    with _locked(directory):
        done = PreparedData.open(directory, tokenizer)
        if done is not None:  # another process finished it while this one waited
            return done
        (directory / "meta.json").unlink(missing_ok=True)  # invalid until every file below is in place
        stream = DocStream(cfg, shard=shard, hf_cache=root / "hf-datasets")
        total = stream.total_bytes if cfg.max_chars is None else min(cfg.max_chars, stream.total_bytes or 1 << 62)
        counts = build_token_files(iter_examples(cfg, template, stream, tokenizer), directory, tokenizer,
                                   val_fraction=cfg.val_fraction, masked=template is not None,
                                   special=template == "model",
                                   dtype=token_dtype(tokenizer.n_vocab), total_chars=total,
                                   max_tokens=cfg.max_tokens, workers=workers, progress=progress)
        if counts["n_documents"] == 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise SLMError(f"the data source {cfg.source!r} holds no text" + (f" in shard {shard[0]}/{shard[1]}"
                           if shard else "") + ": point data.source at a non-empty file or folder, or use 'builtin'")
        meta = {"format": FORMAT_VERSION, "fingerprint": directory.name, "dtype": np.dtype(token_dtype(
                    tokenizer.n_vocab)).name, **counts, "bytes": stream.total_bytes,
                "is_instruction": template is not None, "template": template, "source": cfg.source,
                "kind": stream.kind, "shard": list(shard) if shard else None, "tokenizer": tokenizer.fingerprint(),
                "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_id}
        atomic_write_bytes(directory / "meta.json", json.dumps(meta, indent=1).encode())
    return PreparedData(tokenizer, directory, meta)


# ---- shards: many machines, one corpus ------------------------------------------------------------

def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def prepare_shard(config: RunConfig, shard: tuple[int, int], out_dir: str | Path, progress: bool = True,
                  workers: Optional[int] = None, cache_dir=None) -> "PreparedData":
    """Tokenize shard i/N of config.data into `out_dir/shard-i-of-N/` (+ `out_dir/tokenizer/`).

    Each machine trains the same vocabulary (the first tokenizer.train_chars characters of the whole
    corpus), then reads only its part of the source. The folder, once every shard is there, is a
    data.source that training reads as one corpus."""
    out, root = Path(out_dir).expanduser(), cache_root(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config.data
    if (out / TOKENIZER_DIR).is_dir():  # an earlier shard's vocabulary: every shard must use the same
        tokenizer = Tokenizer.load(out / TOKENIZER_DIR)
        if tokenizer.kind != config.tokenizer.kind and not config.tokenizer.path:
            raise SLMError(f"{out} holds shards of a '{tokenizer.kind}' tokenizer, not tokenizer.kind="
                           f"'{config.tokenizer.kind}': use the same settings for every shard, or another --out")
    else:
        tokenizer = _tokenizer_for(config.tokenizer, cfg, root, progress)
        tmp = out / f"{TOKENIZER_DIR}.tmp-{os.getpid()}"
        tokenizer.save(tmp)
        with contextlib.suppress(OSError):  # another shard's process published it first: same content
            commit(tmp, out / TOKENIZER_DIR)
        shutil.rmtree(tmp, ignore_errors=True)
    directory = out / shard_name(*shard)
    return PreparedData.open(directory, tokenizer) or _build_cache(
        cfg, _first_template(cfg, root), tokenizer, directory, root, progress, workers, shard=shard)


def token_folder(source: str) -> Optional[Path]:
    """`source` as a folder of prepared tokens (meta.json, or shard-*/ subfolders), else None."""
    path = Path(str(source)).expanduser()
    if not path.is_dir():
        return None
    if (path / "meta.json").exists() and (path / "train.bin").exists():
        return path
    return path if any(p.is_dir() for p in path.glob("shard-*-of-*")) else None


def open_token_folder(folder: Path, tokenizer=None) -> "PreparedData":
    """A prepared cache or a folder of shards as one corpus; every shard i/N must be finished."""
    dirs = [folder] if (folder / "meta.json").exists() else sorted(folder.glob("shard-*-of-*"))
    if tokenizer is None:
        where = folder / TOKENIZER_DIR if (folder / TOKENIZER_DIR).is_dir() else None
        if where is None:
            raise SLMError(f"{folder} holds tokens but no {TOKENIZER_DIR}/ folder: copy the tokenizer the shards "
                           "were made with there, or set tokenizer.path")
        tokenizer = Tokenizer.load(where)
    n = int(dirs[0].name.rsplit("-", 1)[1]) if dirs[0] != folder else 1
    expected = [folder] if n == 1 and dirs == [folder] else [folder / shard_name(i, n) for i in range(n)]
    parts = []
    for directory in expected:
        data = PreparedData.open(directory, tokenizer)
        if data is None:
            raise SLMError(f"{directory} is missing, unfinished or made with another tokenizer: run "
                           f"`slm data prepare SOURCE --shard {expected.index(directory)}/{n} --out {folder}` "
                           "(with the same tokenizer) to finish it")
        parts.append(data)
    return parts[0] if len(parts) == 1 else PreparedData.concat(parts, str(folder))


# ---- the prepared splits ------------------------------------------------------------------------

class PreparedData:
    """Token files of one (source, settings, tokenizer) on disk, memory-mapped on first use."""

    def __init__(self, tokenizer, cache_dir: Path, meta: dict):
        self.tokenizer, self.cache_dir, self.meta = tokenizer, Path(cache_dir), meta
        self.fingerprint = meta["fingerprint"]
        self.train_tokens, self.val_tokens = meta["train_tokens"], meta["val_tokens"]
        self.n_chars, self.n_documents = meta["n_chars"], meta["n_documents"]
        self.template, self.is_instruction = meta["template"], meta["is_instruction"]
        self.dtype = np.dtype(meta["dtype"])
        self._maps: dict = {}
        self._parts: list = []  # shards read as one corpus (see concat)

    @classmethod
    def open(cls, directory: Path, tokenizer) -> Optional["PreparedData"]:
        """The cached splits in `directory` (or where its alias points), or None when absent, partial
        or from another format."""
        try:
            if (directory / ALIAS_FILE).exists():
                directory = directory.parent / json.loads((directory / ALIAS_FILE).read_text())["fingerprint"]
            meta = json.loads((directory / "meta.json").read_text())
            if meta.get("format") != FORMAT_VERSION or meta.get("tokenizer") != tokenizer.fingerprint():
                return None
            itemsize = np.dtype(meta["dtype"]).itemsize
            for split in ("train", "val"):
                n = meta[f"{split}_tokens"]
                if (directory / f"{split}.bin").stat().st_size != n * itemsize:
                    return None
                if meta["is_instruction"] and (directory / f"{split}_mask.bin").stat().st_size != n:
                    return None
        except (OSError, ValueError, KeyError):
            return None
        return cls(tokenizer, directory, meta)

    @classmethod
    def concat(cls, parts: list["PreparedData"], source: str) -> "PreparedData":
        """Several prepared shards (same tokenizer) as one corpus: each split is their concatenation."""
        first = parts[0]
        meta = dict(first.meta, source=source, shard=None, fingerprint=_digest([p.fingerprint for p in parts]))
        for key in ("train_tokens", "val_tokens", "n_chars", "n_documents", "train_documents", "val_documents"):
            meta[key] = sum(p.meta.get(key) or 0 for p in parts)
        hists = [p.meta.get("length_histogram", {}).get("log2_bins", []) for p in parts]
        width = max(map(len, hists))
        meta["length_histogram"] = {"log2_bins": np.sum([h + [0] * (width - len(h)) for h in hists], axis=0).tolist()}
        data = cls(first.tokenizer, Path(source), meta)
        data._parts = parts
        return data

    def tokens(self, split: str):
        """The split's token ids: a read-only memmap (or, over shards, a view that indexes like one)."""
        if self._parts:
            return self._maps.setdefault(split, ConcatTokens([p.tokens(split) for p in self._parts]))
        return self._map(f"{_check_split(split)}.bin", self.dtype, self.meta[f"{split}_tokens"])

    def mask(self, split: str):
        if not self.is_instruction:
            return None
        if self._parts:
            return self._maps.setdefault(f"{split}_mask", ConcatTokens([p.mask(split) for p in self._parts]))
        return self._map(f"{_check_split(split)}_mask.bin", np.dtype(np.uint8), self.meta[f"{split}_tokens"])

    def _map(self, name: str, dtype, n: int) -> np.ndarray:
        if name not in self._maps:  # np.memmap cannot map an empty file
            self._maps[name] = np.memmap(self.cache_dir / name, dtype=dtype, mode="r") if n else np.empty(0, dtype)
        return self._maps[name]

    def check_windows(self, context_length: int) -> None:
        """SLMError unless both splits hold at least one training window of context_length + 1 tokens."""
        need = context_length + 1
        for split, have in (("train", self.train_tokens), ("val", self.val_tokens)):
            if have < need:
                fit = max(1, min(self.train_tokens, self.val_tokens) - 1)
                more = "a larger data.val_fraction or " if split == "val" else ""
                raise SLMError(f"the {split} split of {self.meta['source']!r} has {have:,} tokens but one window "
                               f"needs {need:,} (model.context_length={context_length} + 1): use a shorter context "
                               f"(model.context_length={fit} fits), {more}or more data")

    def get_batch(self, split: str, batch_size: int, context_length: int, generator: torch.Generator,
                  rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows x (B, T) int64 and targets y (B, T) = x shifted by one, -100 where masked.

        Each rank samples only from its own contiguous 1/world_size slice of the split. Plain text:
        windows start anywhere. Instruction data: each window ends at a random record's last answer
        token (its eot), so every row trains on a whole answer (or its last T tokens) after as much of
        its prompt as fits; windows starting anywhere would often hold no answer token at all, and a
        batch with no target makes the mean loss NaN.
        """
        import torch  # here, not at import: the Studio previews and tokenizes without loading torch

        data, mask = self.tokens(split), self.mask(split)
        lo, hi = len(data) * rank // world_size, len(data) * (rank + 1) // world_size
        where = f"rank {rank}'s slice of {world_size}" if world_size > 1 else "the split"
        if hi - lo < context_length + 1:
            raise SLMError(f"{where} of the {split} data holds {hi - lo:,} tokens, fewer than one window of "
                           f"{context_length + 1:,}: use a shorter context, fewer processes or more data")
        if mask is None:
            starts = torch.randint(lo, hi - context_length, (batch_size,), generator=generator).numpy()
        else:
            ends = self._answer_ends(split)
            first, last = np.searchsorted(ends, lo + 1), np.searchsorted(ends, hi)
            if first == last:
                raise SLMError(f"{where} of the {split} data holds no answer to train on: use more records "
                               "or fewer processes")
            picked = ends[first + torch.randint(0, last - first, (batch_size,), generator=generator).numpy()]
            starts = np.maximum(picked - context_length, lo)  # the answer's end is the last target
        index = starts[:, None] + np.arange(context_length + 1)  # (B, T+1)
        window = torch.from_numpy(data[index].astype(np.int64))
        # y is a copy: masking it must never touch x (a (1, T) slice is a view even after .contiguous())
        x, y = window[:, :-1].contiguous(), window[:, 1:].clone(memory_format=torch.contiguous_format)
        if mask is not None:
            y[torch.from_numpy(mask[index[:, 1:]] == 0)] = -100
        return x, y

    def _answer_ends(self, split: str) -> np.ndarray:
        """Sorted positions of each record's last trained token (mask 1 followed by 0 or the end)."""
        key = f"{split}_ends"
        if key not in self._maps:
            trained = np.asarray(self.mask(split), dtype=bool)
            self._maps[key] = np.flatnonzero(trained & ~np.append(trained[1:], False))
        return self._maps[key]

    def iter_eval_windows(self, split: str, context_length: int, stride: int) -> Iterator[tuple]:
        """Windows (x, y) of shape (1, ≤T) covering the split once, for strided perplexity.

        Windows start every `stride` tokens (at most T); y is -100 on targets an earlier window
        already scored (and on masked prompt tokens), so every target counts exactly once.
        """
        import torch

        data, mask = self.tokens(split), self.mask(split)
        stride = max(1, min(stride, context_length))
        n, begin, scored = len(data), 0, 0  # scored: last target position already counted
        while scored < n - 1:
            end = min(begin + context_length, n - 1)
            x = torch.from_numpy(data[begin:end].astype(np.int64))[None]
            y = torch.from_numpy(data[begin + 1:end + 1].astype(np.int64))[None]
            fresh = scored - begin  # targets at positions begin+1..scored were counted already
            if fresh > 0:
                y[0, :fresh] = -100
            if mask is not None:
                y[0, torch.from_numpy(mask[begin + 1:end + 1] == 0)] = -100
            yield x, y
            scored, begin = end, begin + stride


def _check_split(split: str) -> str:
    if split not in ("train", "val"):
        raise SLMError(f"unknown split {split!r}: use 'train' or 'val'")
    return split


class ConcatTokens:
    """Token arrays of several shards indexed as one (slices and integer arrays, as get_batch and
    iter_eval_windows use), without copying the files together."""

    def __init__(self, arrays: list):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = [a[max(start - lo, 0):max(min(stop - lo, len(a)), 0)]
                      for a, lo in zip(self.arrays, self.offsets[:-1]) if lo < stop and lo + len(a) > start]
            return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)
        index = np.asarray(key)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for k in np.unique(which):
            chosen = which == k
            out[chosen] = self.arrays[k][index[chosen] - self.offsets[k]]
        return out

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(a) for a in self.arrays])
        return whole if dtype is None else whole.astype(dtype)

"""Documents → token files, once: the train/val split, the token cache, and batch sampling.

`prepare_data` reads a source (slm_core.data_sources), builds or loads the tokenizer, and writes
memory-mapped token files under `<cache root>/<fingerprint>/`:

    train.bin, val.bin             uint16 tokens (uint32 for vocabularies over 65,536), eot after each document
    train_mask.bin, val_mask.bin   uint8, instruction data only: 1 = train on the token, 0 = prompt
    meta.json                      counts and settings; written last, so a half-written cache is never reused

The fingerprint covers the source's identity (paths, sizes, mtimes; builtin name and seed; Hub name
and split), the data settings and the tokenizer's fingerprint, so a second run finds the tokens
without reading the source again. A BPE or character vocabulary trained on a source is cached the
same way under `<cache root>/tokenizers/`. `PreparedData.get_batch` samples random windows every
step; `iter_eval_windows` walks a split once for perplexity. torch is imported only by those two,
so the Studio can preview and tokenize data without loading it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from slm_core.config import DataConfig, RunConfig, TokenizerConfig
from slm_core.data_sources import Documents, read_documents, source_identity
from slm_core.errors import SLMError
from slm_core.templates import default_template, split_prompt_response

FORMAT_VERSION = 1  # bump when the cache layout or tokenization rules change
CHUNK_CHARS = 1 << 20  # characters per encode_batch call: bounded memory on any corpus size
SPLIT_SEED = 0
ALIAS_FILE = "alias.json"


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


def data_summary(data_cfg: DataConfig) -> dict:
    """Size and shape of a source: kind, n_documents, n_chars, columns, is_instruction, template."""
    docs, _ = _read(data_cfg)
    return {"source": data_cfg.source, "kind": docs.kind, "n_documents": len(docs.items),
            "n_chars": docs.n_chars, "columns": docs.columns, "is_instruction": docs.is_instruction,
            "template": resolve_template(docs, data_cfg)}


def split_examples(examples: list, val_fraction: float) -> tuple[list, list]:
    """Deterministic split by document: a seeded choice of val documents, order kept in both splits."""
    if len(examples) == 1:
        if not isinstance(examples[0], str):
            raise SLMError("instruction data needs at least 2 records (one goes to validation): add records")
        text = examples[0]  # one document (e.g. a novel): its last val_fraction is validation, as nanoGPT does
        cut = int(len(text) * (1 - val_fraction))
        return [text[:cut]], [text[cut:]]
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    is_val = np.zeros(len(examples), dtype=bool)
    is_val[np.random.default_rng(SPLIT_SEED).choice(len(examples), n_val, replace=False)] = True
    return [e for e, v in zip(examples, is_val) if not v], [e for e, v in zip(examples, is_val) if v]


# ---- the tokenizer ---------------------------------------------------------------------------------

def _tokenizer_for(tok_cfg: TokenizerConfig, cfg: DataConfig, root: Path, progress: bool):
    """(tokenizer, documents-if-read). A vocabulary trained on this source is reused from the cache."""
    from slm_core.tokenizer import Tokenizer, build_tokenizer

    if tok_cfg.kind == "gpt2" or tok_cfg.path:
        return build_tokenizer(tok_cfg, None, progress=progress), None
    key = _digest({"source": source_identity(cfg), "text_column": cfg.text_column, "template": cfg.template,
                   "max_chars": cfg.max_chars, "hub_split": cfg.hub_split, "tokenizer": dataclasses.asdict(tok_cfg)})
    directory = root / "tokenizers" / key
    if directory.is_dir():
        with contextlib.suppress(Exception):  # unreadable: train it again below
            return Tokenizer.load(directory), None
    docs, examples = _read(cfg, root=root)
    texts = (e if isinstance(e, str) else e[0] + e[1] for e in examples)
    tokenizer = build_tokenizer(tok_cfg, texts, progress=progress)
    tmp = directory.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    try:
        os.replace(tmp, directory)  # a folder appears complete or not at all
    except OSError:  # another process published the same vocabulary first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer, (docs, examples)


# ---- prepare ------------------------------------------------------------------------------------

def prepare_data(config: RunConfig, tokenizer=None, cache_dir=None, progress: bool = True, *,
                 require_windows: bool = True) -> "PreparedData":
    """Tokenize config.data once (cached) and return the memory-mapped splits.

    tokenizer: None builds one from config.tokenizer (training a BPE/char vocabulary on the source
    the first time). require_windows: check that each split holds one model.context_length window + 1
    (training needs it; perplexity on a short file does not).
    """
    cfg, root = config.data, cache_root(cache_dir)
    read = None
    if tokenizer is None:
        tokenizer, read = _tokenizer_for(config.tokenizer, cfg, root, progress)
    identity = source_identity(cfg)
    asked = _fingerprint(identity, cfg, cfg.template, tokenizer)
    data = PreparedData.open(root / asked, tokenizer)
    if data is None:
        docs, examples = read or _read(cfg, root=root)
        # Keyed by the template actually used, so a run's saved config (template filled in) finds
        # the tokens its first start wrote; an alias remembers where the asked-for key led.
        real = _fingerprint(identity, cfg, resolve_template(docs, cfg), tokenizer)
        data = PreparedData.open(root / real, tokenizer) or _build_cache(docs, examples, cfg, tokenizer,
                                                                         root / real, progress)
        if real != asked:
            (root / asked).mkdir(parents=True, exist_ok=True)
            _atomic_write(root / asked / ALIAS_FILE, json.dumps({"fingerprint": real}).encode())
    if require_windows:
        data.check_windows(config.model.context_length)
    return data


def _fingerprint(identity: dict, cfg: DataConfig, template: Optional[str], tokenizer) -> str:
    return _digest({"format": FORMAT_VERSION, "source": identity, "text_column": cfg.text_column,
                    "template": template, "val_fraction": cfg.val_fraction, "max_chars": cfg.max_chars,
                    "hub_split": cfg.hub_split, "tokenizer": tokenizer.fingerprint()})


def _build_cache(docs: Documents, examples: list, cfg: DataConfig, tokenizer, directory: Path,
                 progress: bool) -> "PreparedData":
    from tqdm.auto import tqdm

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)  # invalid until every file below is in place
    dtype = token_dtype(tokenizer.n_vocab)
    splits = dict(zip(("train", "val"), split_examples(examples, cfg.val_fraction)))
    total = sum(_chars(e) for e in examples)
    started, counts = time.perf_counter(), {}
    with tqdm(total=total, unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        for split, items in splits.items():
            counts[split] = _write_split(directory, split, items, tokenizer, dtype, docs.is_instruction, bar)
    meta = {"format": FORMAT_VERSION, "fingerprint": directory.name, "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"], "val_tokens": counts["val"], "n_chars": docs.n_chars,
            "n_documents": len(examples), "train_documents": len(splits["train"]),
            "val_documents": len(splits["val"]), "is_instruction": docs.is_instruction,
            "template": resolve_template(docs, cfg), "source": cfg.source, "kind": docs.kind,
            "tokenizer": tokenizer.fingerprint(), "seconds": round(time.perf_counter() - started, 3)}
    _atomic_write(directory / "meta.json", json.dumps(meta, indent=1).encode())
    return PreparedData(tokenizer, directory, meta)


def _chars(example) -> int:
    return len(example) if isinstance(example, str) else len(example[0]) + len(example[1])


def _chunks(items: list, chars: int = CHUNK_CHARS) -> Iterator[list]:
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += _chars(item)
        if size >= chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _write_split(directory: Path, split: str, items: list, tokenizer, dtype, masked: bool, bar) -> int:
    """Tokenize `items` chunk by chunk into <split>.bin (+ <split>_mask.bin); returns the token count."""
    count = 0
    paths = [directory / f"{split}.bin"] + ([directory / f"{split}_mask.bin"] if masked else [])
    tmps = [p.with_name(f"{p.name}.tmp-{os.getpid()}") for p in paths]
    try:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(t, "wb")) for t in tmps]
            for chunk in _chunks(items):
                ids, mask = _encode_chunk(chunk, tokenizer, masked)
                files[0].write(np.asarray(ids, dtype=dtype).tobytes())
                if masked:
                    files[1].write(np.asarray(mask, dtype=np.uint8).tobytes())
                count += len(ids)
                bar.update(sum(_chars(e) for e in chunk))
    except BaseException:  # interrupted or failed: leave no partial files behind
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in zip(tmps, paths):
        os.replace(tmp, path)
    if not masked:
        (directory / f"{split}_mask.bin").unlink(missing_ok=True)
    return count


def _encode_chunk(chunk: list, tokenizer, masked: bool) -> tuple[list, list]:
    """Token ids of a chunk with eot after each document, and (instruction data) the loss mask."""
    eot, ids, mask = tokenizer.eot_id, [], []
    if masked:  # prompt and answer encoded apart, exactly as generation sees the prompt
        prompts = tokenizer.encode_batch([p for p, _ in chunk])
        answers = tokenizer.encode_batch([r for _, r in chunk])
        for p, r in zip(prompts, answers):
            ids += p + r + [eot]
            mask += [0] * len(p) + [1] * (len(r) + 1)
        return ids, mask
    for seq in tokenizer.encode_batch(chunk):
        ids += seq
        ids.append(eot)
    return ids, mask


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


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

    def tokens(self, split: str) -> np.ndarray:
        return self._map(f"{_check_split(split)}.bin", self.dtype, self.meta[f"{split}_tokens"])

    def mask(self, split: str) -> Optional[np.ndarray]:
        if not self.is_instruction:
            return None
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

"""Token files from a stream of documents: bounded memory, every core, resumable chunk by chunk. A document's
split (train or validation) depends on its text alone. A finished chunk's mark records each part's token
count and checksum: a resumed preparation trusts only parts that match, and the merged files are checked
against their parts before they are published."""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_bytes, commit

CHUNK_CHARS = 4 << 20  # ~4M characters a chunk: ~1M tokens, tens of MB in flight per worker
HIST_BINS = 40  # document lengths in tokens, binned by powers of two: bin k holds [2^k, 2^(k+1))


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def is_val_document(example, val_fraction: float) -> bool:
    """The split of one document, from its content only (so any chunking or sharding agrees)."""
    text = example if isinstance(example, str) else example[0] + "\x1f" + example[1]
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0 ** 64


def _chars(example) -> int:
    return len(example) if isinstance(example, str) else len(example[0]) + len(example[1])


def iter_chunks(examples: Iterable, size: int) -> Iterator[tuple[int, list, bool]]:
    """(index, examples, is_last) of consecutive chunks of about `size` characters."""
    pending, chunk, chars, index = None, [], 0, 0
    for example in examples:
        chunk.append(example)
        chars += _chars(example)
        if chars >= size:
            if pending is not None:
                yield (*pending, False)
            pending, chunk, chars, index = (index, chunk), [], 0, index + 1
    if chunk:
        if pending is not None:
            yield (*pending, False)
        pending = (index, chunk)
    if pending is not None:
        yield (*pending, True)


# ---- one chunk (runs in a worker process) ----------------------------------------------------------

_WORKER_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _in_worker(job: dict) -> dict:
    return tokenize_chunk(_WORKER_TOKENIZER, job, threads=1)  # one process per core: no threads inside


def tokenize_chunk(tokenizer, job: dict, threads: Optional[int] = None) -> dict:
    """Encode one chunk, write its part files, then its JSON: the mark that it is finished, with each part's
    token count and checksum (`files`), which a resumed preparation checks before reusing the part."""
    items, parts, index = job["items"], Path(job["parts"]), job["index"]
    is_val = job.get("forced") or [is_val_document(e, job["val_fraction"]) for e in items]
    masked, dtype = job["masked"], np.dtype(job["dtype"])
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    if masked and job.get("special"):  # a model's chat template writes its special tokens as text
        prompts = [np.asarray(tokenizer.encode(p, allow_special=True), dtype) for p, _ in items]
        answers = [np.asarray(tokenizer.encode(r, allow_special=True), dtype) for _, r in items]
    elif masked:  # prompt and answer encoded apart, exactly as generation sees the prompt
        prompts = _encode(tokenizer, [p for p, _ in items], threads, dtype)
        answers = _encode(tokenizer, [r for _, r in items], threads, dtype)
    if masked:
        seqs = [np.concatenate([p, r]) for p, r in zip(prompts, answers)]
    else:
        seqs, prompts = _encode(tokenizer, items, threads, dtype), None
    out = {split: {"ids": [], "mask": [], "docs": 0, "last": 0} for split in ("train", "val")}
    lengths = np.empty(len(seqs), dtype=np.int64)
    for i, (seq, val) in enumerate(zip(seqs, is_val)):
        part = out["val" if val else "train"]
        part["ids"] += [seq, eot]
        if masked:
            part["mask"] += [np.zeros(len(prompts[i]), np.uint8), np.ones(len(seq) - len(prompts[i]) + 1, np.uint8)]
        part["docs"] += 1
        part["last"] = lengths[i] = len(seq) + 1
    stats = {"index": index, "chars": sum(_chars(e) for e in items), "files": {}}
    for split, part in out.items():
        ids = np.concatenate(part["ids"]) if part["ids"] else np.empty(0, dtype)
        stats["files"][split] = _write_part(parts / f"{index:06d}.{split}.bin", ids)
        if masked:
            mask = np.concatenate(part["mask"]) if part["mask"] else np.empty(0, np.uint8)
            stats["files"][f"{split}_mask"] = _write_part(parts / f"{index:06d}.{split}_mask.bin", mask)
        stats.update({f"{split}_tokens": len(ids), f"{split}_docs": part["docs"], f"{split}_last": int(part["last"])})
    stats["hist"] = np.bincount(np.log2(np.maximum(lengths, 1)).astype(int), minlength=HIST_BINS).tolist()
    atomic_write_bytes(parts / f"{index:06d}.json", json.dumps(stats).encode())
    return stats


def _encode(tokenizer, texts: list, threads: Optional[int], dtype) -> list:
    """Each text's ids as an array. Characters: a table lookup over code points (tiktoken would run its
    regex once per character, at half the speed of nanoGPT's plain dict); a text holding a character
    outside the vocabulary goes through tiktoken for its byte fallback, so the ids are the same."""
    if tokenizer.kind != "char":
        return [np.asarray(ids, dtype=dtype) for ids in tokenizer.encode_batch(texts, threads=threads)]
    table = _char_table(tokenizer)
    out = []
    for text in texts:
        try:
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError:  # a lone surrogate: only tiktoken's byte fallback knows what to do
            points = np.array([len(table)], dtype=np.uint32)
        ids = table[np.minimum(points, len(table) - 1)]
        ok = points.size == 0 or (points.max() < len(table) - 1 and ids.min() >= 0)
        out.append(ids.astype(dtype) if ok else np.asarray(tokenizer.encode(text), dtype=dtype))
    return out


_CHAR_TABLES: dict = {}


def _char_table(tokenizer) -> np.ndarray:
    """code point → id of the tokenizer's characters, -1 elsewhere (one more slot: 'beyond the table')."""
    key = tokenizer.fingerprint()
    if key not in _CHAR_TABLES:
        chars = {token.decode("utf-8"): rank for token, rank in tokenizer.ranks.items()
                 if rank < tokenizer.meta.get("n_chars", 0)}
        table = np.full(max(map(ord, chars), default=0) + 2, -1, dtype=np.int64)
        for char, rank in chars.items():
            table[ord(char)] = rank
        _CHAR_TABLES[key] = table
    return _CHAR_TABLES[key]


def _write_part(path: Path, array: np.ndarray) -> dict:
    """Write one part; returns what its mark records of it: {"tokens", "blake2b"}."""
    payload = array.tobytes()
    atomic_write_bytes(path, payload)
    return {"tokens": len(array), "blake2b": _checksum(payload)}


def _checksum(payload) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _part_files(parts: Path, index: int, masked: bool) -> dict:
    """{name in the mark: part file} of one chunk."""
    names = ["train", "val"] + (["train_mask", "val_mask"] if masked else [])
    return {name: parts / f"{index:06d}.{name}.bin" for name in names}


def _part_problem(path: Path, entry, itemsize: int, payload: Optional[bytes] = None) -> Optional[str]:
    """None if the part file holds the tokens its mark vouches for, else what is wrong with it."""
    if not isinstance(entry, dict) or not {"tokens", "blake2b"} <= entry.keys():
        return f"{path.name} has no checksum in its mark"
    if payload is None:
        try:
            payload = path.read_bytes()
        except OSError:
            return f"{path.name} is missing"
    if len(payload) != entry["tokens"] * itemsize:
        return f"{path.name} holds {len(payload) // itemsize} of {entry['tokens']} tokens"
    if _checksum(payload) != entry["blake2b"]:
        return f"{path.name} is damaged (its checksum does not match its mark)"
    return None


def _finished(parts: Path, index: int, dtype, masked: bool) -> Optional[dict]:
    """The mark of a chunk an earlier call finished, if every part it vouches for is intact; else None (the
    chunk is tokenized again: a part may be truncated, altered or gone since, e.g. by a kill or a bad disk)."""
    try:
        mark = json.loads((parts / f"{index:06d}.json").read_text())
    except (OSError, ValueError):
        return None
    files = mark.get("files") if isinstance(mark, dict) else None
    if not isinstance(files, dict):
        return None
    for name, path in _part_files(parts, index, masked).items():
        if _part_problem(path, files.get(name), 1 if name.endswith("_mask") else np.dtype(dtype).itemsize):
            return None
    return mark


# ---- the whole corpus -------------------------------------------------------------------------------

def build_token_files(examples: Iterable, directory: Path, tokenizer, *, val_fraction: float, masked: bool,
                      dtype, total_chars: Optional[int] = None, max_tokens: Optional[int] = None,
                      workers: Optional[int] = None, progress: bool = True, special: bool = False) -> dict:
    """Tokenize `examples` (strings, or (prompt, answer) pairs when `masked`) into `directory`; returns
    the counts for meta.json. Resumes from finished chunks of an earlier, interrupted call."""
    from tqdm.auto import tqdm

    size = CHUNK_CHARS
    parts = directory / f"parts-{size}"
    parts.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    started, tokens, stats, pool, single = time.perf_counter(), 0, [], None, None
    bar = tqdm(total=total_chars, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing",
               disable=not progress, smoothing=0.1)
    inflight: collections.deque = collections.deque()

    def collect(result: dict) -> bool:  # in chunk order; True once max_tokens is reached
        nonlocal tokens
        stats.append(result)
        tokens += result["train_tokens"] + result["val_tokens"]
        bar.update(result["chars"])
        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9) / 1e6:.2f}M tok/s, "
                            f"{tokens / 1e6:.1f}M tokens", refresh=False)
        return max_tokens is not None and tokens >= max_tokens

    try:
        done = False
        for index, items, last in iter_chunks(examples, size):
            job = {"index": index, "items": items, "parts": str(parts), "val_fraction": val_fraction,
                   "masked": masked, "dtype": np.dtype(dtype).name, "special": special}
            if index == 0 and last:
                job["forced"] = single = _single_document(items, val_fraction)
            result = _finished(parts, index, dtype, masked)
            if result is None and (workers == 1 or (index == 0 and last)):
                result = tokenize_chunk(tokenizer, job)
            elif result is None:
                if pool is None:
                    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_init_worker, initargs=(tokenizer,))
                result = pool.submit(_in_worker, job)
            inflight.append(result)
            while len(inflight) > workers + 1 or (inflight and last):  # a few chunks in memory
                head = inflight.popleft()
                if collect(head if isinstance(head, dict) else head.result()):
                    done = True
                    break
            if done:
                break
        while inflight and not done:
            head = inflight.popleft()
            done = collect(head if isinstance(head, dict) else head.result())
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    counts = _concatenate(directory, parts, stats, dtype, masked)
    if single:  # one document cut in two is still one document
        counts["n_documents"] = 1
    shutil.rmtree(parts, ignore_errors=True)
    counts["seconds"] = round(time.perf_counter() - started, 3)
    return counts


def _single_document(items: list, val_fraction: float) -> Optional[list]:
    """A corpus of one text (a novel, a play): its last val_fraction becomes the validation document."""
    if len(items) != 1:
        return None
    if not isinstance(items[0], str):
        raise SLMError("instruction data needs at least 2 records (one goes to validation): add records")
    text = items.pop()
    cut = int(len(text) * (1 - val_fraction))
    items.extend([text[:cut], text[cut:]])
    return [False, True]


def _concatenate(directory: Path, parts: Path, stats: list, dtype, masked: bool) -> dict:
    """train.bin / val.bin (+ masks) from the parts, in chunk order, through memory-mapped outputs."""
    docs = {s: sum(c[f"{s}_docs"] for c in stats) for s in ("train", "val")}
    moved = None  # (from split, tokens): at least one document on each side when there are two
    if docs["val"] == 0 and docs["train"] >= 2:
        moved = ("train", next(c["train_last"] for c in reversed(stats) if c["train_docs"]))
    elif docs["train"] == 0 and docs["val"] >= 2:
        moved = ("val", next(c["val_last"] for c in reversed(stats) if c["val_docs"]))
    suffixes = [("", dtype)] + ([("_mask", np.uint8)] if masked else [])
    counts: dict = {}
    for suffix, kind in suffixes:
        streams = {s: [(parts / f"{c['index']:06d}.{s}{suffix}.bin", c["files"][f"{s}{suffix}"]) for c in stats]
                   for s in ("train", "val")}
        totals = {s: sum(c[f"{s}_tokens"] for c in stats) for s in ("train", "val")}
        if moved:  # the moved document's tokens are the tail of its split's stream
            source, n = moved
            other = "val" if source == "train" else "train"
            _copy(streams[source], totals[source] - n, directory / f"{source}{suffix}.bin", kind)
            _copy(streams[source], totals[source], directory / f"{other}{suffix}.bin", kind, start=totals[source] - n)
            totals = {source: totals[source] - n, other: n}
        else:
            for split in ("train", "val"):
                _copy(streams[split], totals[split], directory / f"{split}{suffix}.bin", kind)
        counts.update({"train_tokens": totals["train"], "val_tokens": totals["val"]})
    if not masked:
        for split in ("train", "val"):
            (directory / f"{split}_mask.bin").unlink(missing_ok=True)
    if moved:
        docs = {moved[0]: docs[moved[0]] - 1, ("val" if moved[0] == "train" else "train"): 1}
    hist = np.sum([c["hist"] for c in stats], axis=0).tolist() if stats else [0] * HIST_BINS
    counts.update({"train_documents": docs["train"], "val_documents": docs["val"],
                   "n_documents": docs["train"] + docs["val"], "n_chars": sum(c["chars"] for c in stats),
                   "length_histogram": {"log2_bins": _trim(hist)}})
    return counts


def _trim(hist: list) -> list:
    while hist and hist[-1] == 0:
        hist = hist[:-1]
    return hist


def _copy(parts: list, stop: int, target: Path, dtype, start: int = 0) -> None:
    """Tokens [start, stop) of the concatenated parts ((path, its mark's entry) pairs) into `target`,
    atomically, one part at a time through a memory map of just that part's span: mapped pages are released
    after each part, so the resident set stays one part (a whole-file memmap would count every written page
    as resident). Each part is checked against its mark as it is read, and the written file against the
    parts (its length, and the checksum of their spans) before it is renamed into place."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    itemsize = np.dtype(dtype).itemsize
    with open(tmp, "wb") as f:
        f.truncate(max(0, stop - start) * itemsize)
    expected = hashlib.blake2b(digest_size=16)
    position, written = 0, 0  # position: tokens of the concatenation before this part
    try:
        for path, entry in parts:
            payload = path.read_bytes()
            problem = _part_problem(path, entry, itemsize, payload)
            if problem:  # changed since it was checked: its chunk is tokenized anew next time
                path.with_name(f"{path.name.split('.')[0]}.json").unlink(missing_ok=True)
                raise SLMError(f"the token part {problem} ({path.parent}); prepare the data again: that chunk is "
                               "tokenized anew")
            part = np.frombuffer(payload, dtype=dtype)
            lo, hi = max(start - position, 0), min(stop - position, len(part))
            if hi > lo:
                out = np.memmap(tmp, dtype=dtype, mode="r+", offset=written * itemsize, shape=(hi - lo,))
                out[:] = part[lo:hi]
                out.flush()
                del out
                expected.update(part[lo:hi])  # a contiguous view: hashed without a copy
                written += hi - lo
            position += len(part)
        _check_merged(tmp, target, (stop - start) * itemsize, expected.hexdigest())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, target)


def _check_merged(tmp: Path, target: Path, size: int, checksum: str) -> None:
    """The merged file, read back, is exactly the parts' spans (before meta.json can vouch for it)."""
    actual = hashlib.blake2b(digest_size=16)
    with open(tmp, "rb") as handle:
        while block := handle.read(4 << 20):
            actual.update(block)
    if tmp.stat().st_size != size or actual.hexdigest() != checksum:
        raise SLMError(f"{target.name} came out {tmp.stat().st_size} bytes, not the {size} of its parts, or with "
                       f"other bytes (disk or memory error?); prepare the data again")

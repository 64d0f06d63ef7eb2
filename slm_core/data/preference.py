"""Preference pairs for DPO/ORPO: rows of (prompt, chosen, rejected) from a JSONL/CSV/Parquet file, a Hub
dataset by name or the shipped offline set (`builtin:preferences`: a story's next sentences preferred over the
same words shuffled), in plain or conversational (message-list) form; rendered in the run's template or, as
token ids, in the model's own chat template; tokenized once into a cache folder (the reference log-probabilities
are cached beside them); batched as [chosen rows; rejected rows]."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from slm_core.config import PREFERENCE_MODES, DataConfig, RunConfig, load_run_config
from slm_core.data.cache import cache_root
from slm_core.data.corpus import builtin_stories
from slm_core.data.sources import hub_offline_reason, load_tabular, source_identity, source_kind
from slm_core.data.stream import open_hub_stream
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_bytes, atomic_write_json
from slm_core.models.sources import resolve_source
from slm_core.models.templates import content_text, format_prompt

if TYPE_CHECKING:
    import torch

BUILTIN = "builtin:preferences"
FORMAT_VERSION = 1
REQUIRED = ("prompt", "chosen", "rejected")
ROW_HINT = ("every row needs 'prompt', 'chosen' and 'rejected' (text, or message lists), or 'chosen' and "
            "'rejected' conversations that share the prompt")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# ---- the shipped offline set -------------------------------------------------------------------

def builtin_pairs(n_pairs: int = 3000, seed: int = 1) -> list[dict]:
    """A story's next sentences as written (chosen) against the same words shuffled (rejected), after the two
    sentences before them (prompt). Both replies hold the same words, so only their order can tell them apart.
    Deterministic for a seed. The stories come from another seed than the pretraining corpus ('builtin' uses
    0), so a model pretrained on that has not read these very texts."""
    rng, pairs = random.Random(seed), []
    for story in builtin_stories(n_chars=n_pairs * 400, seed=seed):
        for paragraph in story.split("\n\n"):
            sentences = SENTENCE_END.split(paragraph.strip())
            if len(sentences) < 3:
                continue
            size = 2 if len(sentences) >= 4 and rng.random() < 0.5 else 1
            start = rng.randrange(2, len(sentences) - size + 1)
            words = " ".join(sentences[start:start + size]).split()
            shuffled = words[:]
            while shuffled == words and len(set(words)) > 1:
                rng.shuffle(shuffled)
            if shuffled == words:
                continue
            pairs.append({"prompt": " ".join(sentences[start - 2:start]), "chosen": " " + " ".join(words),
                          "rejected": " " + " ".join(shuffled)})
            if len(pairs) == n_pairs:
                return pairs
    return pairs


# ---- reading rows ------------------------------------------------------------------------------

@dataclass
class Row:
    """One pair, normalised: prompt as text or messages, the two replies as text."""
    prompt: Any  # str | list[dict] (chat messages)
    chosen: str
    rejected: str
    chat: bool  # the row came as messages (render it in a chat template)


def read_rows(config: RunConfig) -> list[Row]:
    """Every pair of data.source (the first data.max_documents), checked; SLMError naming a bad row's line."""
    cfg = config.data
    if cfg.source.strip() == BUILTIN:
        raw: Iterator = ((f"row {i + 1}", r) for i, r in enumerate(builtin_pairs()))
        where = BUILTIN
    else:
        raw, where = _raw_rows(config)
    rows = []
    for place, record in raw:
        rows.append(parse_row(record, f"{where} {place}"))
        if cfg.max_documents and len(rows) >= cfg.max_documents:
            break
    if len(rows) < 2:
        raise SLMError(f"{where} holds {len(rows)} preference pair(s): give at least 2 (one to train on, one held out)")
    return rows


def _raw_rows(config: RunConfig) -> tuple[Iterator, str]:
    """(('line N' or 'row N', record) for each row, the source's name)."""
    cfg = config.data
    kind, detail = source_kind(cfg.source)
    if kind == "hub":
        return _hub_rows(config, detail), detail
    if kind != "tabular":
        raise SLMError(f"data.source {cfg.source!r} is no preference file: give a JSONL, CSV or Parquet file with "
                       f"prompt/chosen/rejected columns, a Hub dataset name or '{BUILTIN}'")
    if detail.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl_rows(detail), str(detail)
    dataset = load_tabular(detail, cache_root() / "hf-datasets")
    if detail.suffix.lower() in (".csv", ".tsv"):  # line 1 is the header
        return ((f"line {i + 2}", row) for i, row in enumerate(dataset)), str(detail)
    return ((f"row {i + 1}", row) for i, row in enumerate(dataset)), str(detail)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(line number, record): read here rather than by datasets, whose errors do not say which line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise SLMError(f"{path} line {number} is not JSON ({error.msg}, column {error.colno}): each line "
                               "must be one object like {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}") from None


def _hub_rows(config: RunConfig, name: str) -> Iterator[tuple[str, Any]]:
    reason = hub_offline_reason()
    if reason:  # said here: the offline alternatives for pairs are not those for text
        raise SLMError(f"{name!r} is no local file, and as a Hub dataset it cannot be downloaded ({reason}); use "
                       f"'{BUILTIN}' (the shipped pairs) or a local JSONL/CSV/Parquet file of prompt/chosen/rejected")
    return ((f"row {i + 1}", row) for i, row in enumerate(open_hub_stream(name, config.data)))


def parse_row(record: Any, where: str) -> Row:
    """A record in any accepted shape as a Row, else SLMError saying what is wrong at `where`."""
    if not isinstance(record, dict):
        raise SLMError(f"{where}: is a {type(record).__name__}, not an object; {ROW_HINT}")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise SLMError(f"{where}: no '{key}'; {ROW_HINT}")
        if record[key] is None:  # an empty CSV cell, a null in JSON
            raise SLMError(f"{where}: '{key}' is empty; drop the row or fill it in")
    prompt, chosen, rejected = record.get("prompt"), record["chosen"], record["rejected"]
    chat = any(isinstance(v, list) for v in (prompt, chosen, rejected))
    if chat:
        replies = _reply(chosen, "chosen", where), _reply(rejected, "rejected", where)
        if prompt is None:  # implicit prompt: both conversations start with it (UltraFeedback's layout)
            prompt = _messages(chosen, "chosen", where)[:-1]
            if not prompt or _messages(rejected, "rejected", where)[:-1] != prompt:
                raise SLMError(f"{where}: no 'prompt', and 'chosen' and 'rejected' do not start with the same "
                               "turns; give the shared turns as 'prompt'")
        prompt = _messages(prompt, "prompt", where) if isinstance(prompt, list) else [
            {"role": "user", "content": _text(prompt, "prompt", where)}]
        chosen, rejected = replies
    elif prompt is None:
        raise SLMError(f"{where}: {'no' if 'prompt' not in record else 'an empty'} 'prompt'; {ROW_HINT}")
    else:
        prompt = _text(prompt, "prompt", where)
        chosen, rejected = _text(chosen, "chosen", where), _text(rejected, "rejected", where)
    if chosen == rejected:
        raise SLMError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
    return Row(prompt, chosen, rejected, chat)


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise SLMError(f"{where}: '{key}' is a {type(value).__name__}; give text or a message list")
    if not value.strip():
        raise SLMError(f"{where}: '{key}' is empty; drop the row or fill it in")
    return value


def _messages(value: Any, key: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, key, where)}]
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) and "role" in m for m in value):
        raise SLMError(f"{where}: '{key}' is not a list of {{role, content}} messages")
    return [{"role": str(m["role"]), "content": content_text(m.get("content"))} for m in value]


def _reply(value: Any, key: str, where: str) -> str:
    """The assistant's reply of a 'chosen'/'rejected' value: text, or the last message of a list."""
    if isinstance(value, str):
        return _text(value, key, where)
    last = _messages(value, key, where)[-1]
    if last["role"] != "assistant":
        raise SLMError(f"{where}: '{key}' ends with a {last['role']!r} message; it must end with the assistant's reply")
    return _text(last["content"], key, where)


# ---- rendering and tokenizing --------------------------------------------------------------------

def resolve_template(rows: list[Row], template: Optional[str], tokenizer) -> Optional[str]:
    """The template pairs train in: data.template if set; else the model's own chat template when its
    tokenizer has one, ChatML for message rows without one, plain text for plain rows."""
    if template:
        return template
    if getattr(tokenizer, "chat_template", None):
        return "model"
    return "chatml" if any(r.chat for r in rows) else None


def render(row: Row, template: Optional[str], tokenizer) -> tuple[list, list, list]:
    """(prompt ids, chosen ids, rejected ids). Plain text: the reply continues the prompt (no end mark);
    a template: the prompt ends at the answer header and each reply ends with the end-of-text token, as
    instruction tuning trains them; 'model': the chat template's own ids (its control tokens as ids)."""
    if template is None:
        prompt = row.prompt if isinstance(row.prompt, str) else format_prompt(row.prompt, None)
        return tokenizer.encode(prompt), tokenizer.encode(row.chosen), tokenizer.encode(row.rejected)
    messages = row.prompt if isinstance(row.prompt, list) else [{"role": "user", "content": row.prompt}]
    eot = [tokenizer.eot_id]
    if template != "model":
        prompt = tokenizer.encode(format_prompt(messages, template))
        return prompt, tokenizer.encode(row.chosen) + eot, tokenizer.encode(row.rejected) + eot
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    replies = []
    for reply in (row.chosen, row.rejected):
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=True)
        if full[:len(prompt)] != prompt:
            raise SLMError("the model's chat template renders a conversation differently from its prompt (it "
                           "rewrites earlier turns); train with data.template 'chatml' instead")
        replies.append(list(full[len(prompt):]) + eot)
    return list(prompt), replies[0], replies[1]


def fit(prompt: list, reply: list, max_tokens: int) -> tuple[list, list]:
    """Prompt and reply within max_tokens: the reply keeps its start, the prompt its end (the part next to
    the reply), and the prompt keeps at least half the room when both are long."""
    if len(prompt) + len(reply) <= max_tokens:
        return prompt, reply
    keep_prompt = min(len(prompt), max(max_tokens - len(reply), max_tokens // 2))
    return prompt[len(prompt) - keep_prompt:], reply[:max_tokens - keep_prompt]


# ---- the cache and batches -----------------------------------------------------------------------

def _identity(config: RunConfig) -> dict:
    if config.data.source.strip() == BUILTIN:
        code = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:16]
        return {"kind": BUILTIN, "code": code, **source_identity(config.data.__class__(source="builtin"))}
    return source_identity(config.data)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def prepare_preferences(config: RunConfig, tokenizer, cache_dir=None) -> "PreferenceData":
    """config.data.source's pairs tokenized in the run's template (cached by source, settings, tokenizer),
    split into train and held-out pairs by data.val_fraction."""
    cfg = config.data
    key = {"format": FORMAT_VERSION, "kind": "preferences", "source": _identity(config), "template": cfg.template,
           "val_fraction": cfg.val_fraction, "max_documents": cfg.max_documents, "hub_split": cfg.hub_split,
           "tokenizer": tokenizer.fingerprint(), "chat_template": _digest(getattr(tokenizer, "chat_template", None))}
    folder = cache_root(cache_dir) / f"pref-{_digest(key)}"
    data = PreferenceData.open(folder, tokenizer)
    if data is None:
        data = _build(config, tokenizer, folder, _digest(key))
    return data


def _build(config: RunConfig, tokenizer, folder: Path, fingerprint: str) -> "PreferenceData":
    rows = read_rows(config)
    template = resolve_template(rows, config.data.template, tokenizer)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    n_val = max(1, round(len(rows) * config.data.val_fraction))
    splits = {"val": sorted(order[:n_val]), "train": sorted(order[n_val:])}
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "template": template, "source": config.data.source,
            "tokenizer": tokenizer.fingerprint(), "n_chars": sum(_chars(r) for r in rows)}
    for split, picked in splits.items():
        ids, index = [], []
        for i in picked:
            prompt, chosen, rejected = render(rows[i], template, tokenizer)
            index.append((sum(map(len, ids)), len(prompt), len(chosen), len(rejected)))
            ids += [prompt, chosen, rejected]
        tokens = np.concatenate([np.asarray(x, np.int32) for x in ids]) if ids else np.empty(0, np.int32)
        atomic_write_bytes(folder / f"{split}_tokens.npy", _npy(tokens))
        atomic_write_bytes(folder / f"{split}_index.npy", _npy(np.asarray(index, np.int64).reshape(-1, 4)))
        meta[f"{split}_pairs"], meta[f"{split}_tokens"] = len(picked), int(tokens.size)
    atomic_write_json(folder / "meta.json", meta)  # last: vouches for the files above
    return PreferenceData(tokenizer, folder, meta)


def _chars(row: Row) -> int:
    prompt = row.prompt if isinstance(row.prompt, str) else "".join(m["content"] for m in row.prompt)
    return len(prompt) + len(row.chosen) + len(row.rejected)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class PreferenceData:
    """Tokenized pairs of one (source, settings, tokenizer). Batches hold 2B rows, the B chosen replies then
    the same B prompts with their rejected replies; `y` carries one extra last column, the pair's index in
    its split (the key of its cached reference log-probabilities)."""

    is_instruction = True

    def __init__(self, tokenizer, folder: Path, meta: dict):
        self.tokenizer, self.cache_dir, self.meta = tokenizer, Path(folder), meta
        self.fingerprint, self.template = meta["fingerprint"], meta["template"]
        self.train_tokens, self.val_tokens = meta["train_tokens"], meta["val_tokens"]
        self.n_chars = meta["n_chars"]
        self._arrays = {split: (np.load(folder / f"{split}_tokens.npy"), np.load(folder / f"{split}_index.npy"))
                        for split in ("train", "val")}

    @classmethod
    def open(cls, folder: Path, tokenizer) -> Optional["PreferenceData"]:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("format") != FORMAT_VERSION or meta.get("tokenizer") != tokenizer.fingerprint():
                return None
            return cls(tokenizer, folder, meta)
        except (OSError, ValueError, KeyError):
            return None

    def pairs(self, split: str) -> int:
        return len(self._arrays[split][1])

    def tokens(self, split: str) -> np.ndarray:
        """No running text to measure bits per byte on: pairs are not a corpus."""
        return np.empty(0, np.int32)

    def sample_indices(self, split: str, batch_size: int, generator: "torch.Generator", rank: int = 0,
                       world_size: int = 1) -> np.ndarray:
        """Random pairs from this rank's contiguous slice of the split."""
        import torch

        n = self.pairs(split)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        if hi <= lo:
            raise SLMError(f"rank {rank}'s share of the {n} {split} pairs is empty: use fewer processes or more pairs")
        return (lo + torch.randint(0, hi - lo, (batch_size,), generator=generator)).numpy()

    def get_batch(self, split: str, batch_size: int, context_length: int, generator: "torch.Generator",
                  rank: int = 0, world_size: int = 1) -> tuple["torch.Tensor", "torch.Tensor"]:
        return self.batch(split, self.sample_indices(split, batch_size, generator, rank, world_size), context_length)

    def batch(self, split: str, indices, context_length: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """x (2B, T) int64, padded with end-of-text; y (2B, T+1): the next token where it is a reply token,
        -100 elsewhere, then the pair index. T: the longest row, at most context_length."""
        import torch

        tokens, index = self._arrays[split]
        rows, starts = [], []
        for reply in (1, 2):  # chosen rows, then rejected rows
            for i in indices:
                start, n_prompt, n_chosen, n_rejected = (int(v) for v in index[i])
                prompt = tokens[start:start + n_prompt]
                offset = start + n_prompt + (n_chosen if reply == 2 else 0)
                answer = tokens[offset:offset + (n_chosen if reply == 1 else n_rejected)]
                prompt, answer = fit(list(prompt), list(answer), context_length + 1)
                rows.append(prompt + answer)
                starts.append(len(prompt))
        width = max(len(r) for r in rows) - 1
        x = torch.full((len(rows), width), self.tokenizer.eot_id, dtype=torch.long)
        y = torch.full((len(rows), width + 1), -100, dtype=torch.long)
        for r, (seq, n_prompt) in enumerate(zip(rows, starts)):
            seq = torch.tensor(seq, dtype=torch.long)
            x[r, :len(seq) - 1] = seq[:-1]
            y[r, max(n_prompt - 1, 0):len(seq) - 1] = seq[max(n_prompt, 1):]
        y[:, -1] = torch.as_tensor(np.concatenate([indices, indices]), dtype=torch.long)
        return x, y

    def iter_batches(self, split: str, batch_size: int, context_length: int,
                     limit: Optional[int] = None) -> Iterator[tuple[np.ndarray, "torch.Tensor", "torch.Tensor"]]:
        """(indices, x, y) over the split's pairs in order (the first `limit`), for evaluation and references."""
        n = self.pairs(split) if limit is None else min(limit, self.pairs(split))
        for lo in range(0, n, batch_size):
            indices = np.arange(lo, min(lo + batch_size, n))
            yield (indices, *self.batch(split, indices, context_length))


def text_data_config(config: RunConfig, model_path: Optional[Path] = None) -> RunConfig:
    """The config whose data source a model's perplexity is measured on. A preference run's pairs are no running
    text: it takes its base's data (a run's own, else the built-in stories, as a Hugging Face folder does).
    model_path: the checkpoint folder the model came from (<runs>/<run>/checkpoints/<tag>), whose runs folder
    holds a base named by run name."""
    if config.train.mode not in PREFERENCE_MODES:
        return config
    path = Path(model_path) if model_path else None
    runs_dir = path.parents[2] if path is not None and path.parent.name == "checkpoints" else None
    try:
        base_folder = resolve_source(config.train.init_from, runs_dir=runs_dir)
        base = load_run_config(base_folder / "config.yaml")
    except (SLMError, OSError):
        return dataclasses.replace(config, data=DataConfig())
    return dataclasses.replace(config, data=text_data_config(base, base_folder).data)

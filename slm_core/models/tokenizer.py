"""Tokenizers (GPT-2's BPE, a BPE trained on the corpus, characters, Hugging Face folders): the `Tokenizer`
class, `build_tokenizer`, and the saved folder."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional

import tiktoken

from slm_core.allowlist import readable
from slm_core.config import TokenizerConfig
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, atomic_write_text
from slm_core.models.sources import OFFLINE_VALUES
from slm_core.models.templates import format_prompt, render_chat_template

EOT = "<|endoftext|>"
META_FILE = "slm_tokenizer.json"
RANKS_FILE = "ranks.tiktoken"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
HF_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# GPT-2's pre-tokenizer split (contractions, letters, digits, other symbols, whitespace); the same regex
# as tiktoken's r50k pattern, which it is taken from when available.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CHAR_PATTERN = r"[\s\S]"  # one piece per character: a piece is either a known character or its bytes
MAX_TRAIN_CHARS = 200_000_000  # BPE statistics settle long before this; bounds time and memory on huge corpora
GPT2_DOWNLOAD_TIMEOUT_S = 60.0
OFFLINE_HINT = ("With no network, set tokenizer.path to a folder holding GPT-2's original vocab.bpe and "
                "encoder.json (or a saved tokenizer / Hugging Face folder), or use tokenizer.kind 'bpe' "
                "(trained on your data) or 'char'.")
HF_EOS_CANDIDATES = (EOT, "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "</s>", "<eos>")


def _gpt2_pattern() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    except ImportError:  # the plugin module is optional in principle; the regex above is equivalent
        return GPT2_PATTERN


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
    for U+0100 onwards, so every byte string is a printable string (how HF stores byte-level vocabs)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {ch: byte for byte, ch in bytes_to_unicode().items()}


def _fingerprint(kind: str, ranks: dict[bytes, int], pattern: str, special: dict[str, int]) -> str:
    digest = hashlib.sha256(f"{kind}\n{pattern}\n{sorted(special.items())}\n".encode())
    digest.update(_ranks_text(ranks).encode())
    return digest.hexdigest()[:16]


def _ranks_text(ranks: dict[bytes, int]) -> str:
    return "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


class Tokenizer:
    """One tokenizer of any kind. Build with `build_tokenizer`, `Tokenizer.load` or `Tokenizer.from_hf`."""

    def __init__(self, kind: str, ranks: Optional[dict[bytes, int]] = None, pattern: Optional[str] = None,
                 meta: Optional[dict] = None, hf=None, hf_files: Optional[dict[str, bytes]] = None,
                 eot_id: Optional[int] = None):
        self.kind = kind
        self.meta = dict(meta or {})
        self._ranks, self._pattern, self._hf, self._hf_files = ranks, pattern, hf, hf_files or {}
        self._fingerprint: Optional[str] = None
        if hf is None:  # tiktoken-backed: ranks 0..N-1, then <|endoftext|> = N
            self.eot_id = len(ranks)
            self._special = {EOT: self.eot_id}
            self._enc = tiktoken.Encoding(name=f"slm-{kind}", pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=self._special, explicit_n_vocab=len(ranks) + 1)
            self.n_vocab = self._enc.n_vocab
        else:
            self._enc, self.eot_id = None, eot_id
            self.n_vocab = hf.get_vocab_size(with_added_tokens=True)
            self._added = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
            self._decoders = _hf_decoder_kinds(self._hf_files.get("tokenizer.json", b"{}"))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, n_vocab={self.n_vocab}, eot_id={self.eot_id})"

    # ---- encoding and decoding ---------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of `text`; '<|endoftext|>' written in the text is ordinary text, never the special id.
        allow_special=True reads special tokens written in the text as their ids (for text a chat
        template rendered, never for user data), as transformers' tokenizer does by default."""
        if self._enc is not None:
            return self._enc.encode(text, allowed_special="all") if allow_special else self._enc.encode_ordinary(text)
        if allow_special:
            return self._hf_with_special().encode(text, add_special_tokens=False).ids
        return self._hf.encode(text, add_special_tokens=False).ids

    def _hf_with_special(self):
        # A second instance with special-token matching on: flipping the flag on the shared one would
        # race with encodes in other threads (the data pipeline's batches).
        if getattr(self, "_hf_special", None) is None:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf_special = HFTokenizer.from_str(self._hf_files["tokenizer.json"].decode("utf-8"))
            self._hf_special.no_padding()
            self._hf_special.no_truncation()
        return self._hf_special

    # ---- special tokens and the chat template -------------------------------------------------

    @property
    def special_tokens(self) -> dict:
        """bos/eos/unk/pad token strings as the template sees them (tokenizer_config.json for 'hf')."""
        if self._hf is None:
            return {"bos_token": EOT, "eos_token": EOT}
        return _hf_special_tokens(self._hf_files)

    @property
    def bos_id(self) -> Optional[int]:
        bos = self.special_tokens.get("bos_token") if self._hf is not None else None
        return self._hf.token_to_id(bos) if bos else None

    @property
    def stop_ids(self) -> tuple:
        """Ids that end a reply: end-of-text, plus the end-of-turn tokens the chat template writes
        (a Qwen/Llama-3 base tokenizer's eos is <|endoftext|> while its turns end with <|im_end|>)."""
        template = self.chat_template or ""
        turn_ends = [self._added_id(t) for t in HF_EOS_CANDIDATES if t in template] if self._hf is not None else []
        return tuple(dict.fromkeys([self.eot_id, *(i for i in turn_ends if i is not None)]))

    def _added_id(self, token: str) -> Optional[int]:
        token_id = self._hf.token_to_id(token)
        return token_id if token_id in self._added else None

    @property
    def chat_template(self) -> Optional[str]:
        """The model's own Jinja chat template, if its folder has one."""
        return _hf_chat_template(self._hf_files) if self._hf is not None else None

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False,
                            template: Optional[str] = None, **variables):
        """Render chat messages as transformers' `apply_chat_template` does (text, or ids with
        tokenize=True: the template's control tokens as their ids, the messages' own text as plain text
        even where it spells a control token). Without a Jinja template of its own, `template` names one
        of ours ('chatml' | 'alpaca', ending with the answer header)."""
        messages = list(messages)
        text = self._render_chat(messages, add_generation_prompt, template, variables)
        if not tokenize:
            return text
        specials = self.special_texts
        if not any(s in str(m.get("content", "")) for m in messages for s in specials):
            return self.encode(text, allow_special=True)  # one pass over the whole text, as transformers does
        # A message spelling a control token: render with placeholders, then encode the template's pieces with
        # their control tokens and each message's text as plain text.
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        marked = [{**m, "content": mark} for m, mark in zip(messages, marks)]
        pieces = re.split("(\ue000\\d+\ue001)", self._render_chat(marked, add_generation_prompt, template, variables))
        ids = []
        for piece in pieces:
            if piece in marks:
                ids += self.encode(str(messages[marks.index(piece)].get("content", "")))
            elif piece:
                ids += self.encode(piece, allow_special=True)
        return ids

    def _render_chat(self, messages: list, add_generation_prompt: bool, template: Optional[str], variables: dict):
        if self.chat_template:
            return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                        special_tokens=self.special_tokens, **variables)
        if template:
            return format_prompt(messages, template)
        raise SLMError("this tokenizer has no chat template: pick data.template 'chatml' or 'alpaca', or a model "
                       "whose tokenizer_config.json has a chat_template")

    @property
    def special_texts(self) -> list[str]:
        """The control tokens' spellings (text that encode(allow_special=True) reads as one id)."""
        if self._hf is None:
            return [EOT]
        return [t.content for t in self._hf.get_added_tokens_decoder().values() if t.special]

    def encode_batch(self, texts: list[str], threads: Optional[int] = None) -> list[list[int]]:
        """Like `encode` on each text, using all cores (tiktoken's / tokenizers' threaded batches).
        threads=1: in this thread only (a process pool already gives each core a process)."""
        texts = list(texts)
        if self._hf is not None:
            if threads == 1:
                return [e.ids for e in map(lambda t: self._hf.encode(t, add_special_tokens=False), texts)]
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        threads = threads or min(8, os.cpu_count() or 1)
        if threads == 1 or len(texts) < 64:
            return [self._enc.encode_ordinary(t) for t in texts]
        # tiktoken releases the GIL while encoding; handing each thread a chunk of documents rather than
        # one document at a time (as encode_ordinary_batch does) avoids per-document future overhead.
        size = max(16, len(texts) // (threads * 4))
        chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
        with ThreadPoolExecutor(threads) as pool:
            done = pool.map(lambda chunk: [self._enc.encode_ordinary(t) for t in chunk], chunks)
            return [ids for chunk_ids in done for ids in chunk_ids]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (may end inside a UTF-8 character, so a streamer can hold it back).
        Ids outside the vocabulary (a model's padded rows) decode to nothing."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.n_vocab]
        if self._enc is not None:
            return self._enc.decode_bytes(ids)
        return b"".join(self._hf_token_bytes(i) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        if self._enc is not None:
            return self.decode_bytes(ids).decode("utf-8", errors="replace")
        ids = [int(i) for i in ids if 0 <= int(i) < self.n_vocab]
        return self._hf.decode(ids, skip_special_tokens=False)

    def _hf_token_bytes(self, token_id: int) -> bytes:
        # One token's bytes for streaming: HF's decoder works on whole sequences (and strips the
        # leading space of sentencepiece text), so single tokens are mapped by hand.
        token = self._hf.id_to_token(token_id) or ""
        match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token)  # sentencepiece byte fallback
        if match and "ByteFallback" in self._decoders:
            return bytes([int(match.group(1), 16)])
        if token_id in self._added:  # special and added tokens are stored as plain text
            return self._added[token_id].encode("utf-8")
        if "ByteLevel" in self._decoders:
            return b"".join(bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE else c.encode() for c in token)
        if "Metaspace" in self._decoders or "Replace" in self._decoders:
            token = token.replace("\u2581", " ")  # sentencepiece's visible space
        return token.encode("utf-8")

    # ---- identity, saving, loading -------------------------------------------------------------

    def fingerprint(self) -> str:
        """A stable hash of the kind and the vocabulary content (16 hex digits)."""
        if self._fingerprint is None:  # the vocabulary never changes after construction
            if self._enc is not None:
                self._fingerprint = _fingerprint(self.kind, self._ranks, self._pattern, self._special)
            else:
                digest = hashlib.sha256(b"hf\n" + self._hf_files.get("tokenizer.json", b""))
                digest.update(f"\neot={self.eot_id}".encode())
                self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer to `directory`; `Tokenizer.load(directory)` gives back the same ids."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._enc is not None:
            atomic_write_text(directory / RANKS_FILE, _ranks_text(self._ranks))
        else:
            for name, content in self._hf_files.items():
                atomic_write_text(directory / name, content.decode("utf-8"))
        # The meta file goes last: its presence marks a complete folder.
        atomic_write_json(directory / META_FILE, {
            "format": "slm-tokenizer", "version": 1, "kind": self.kind, "n_vocab": self.n_vocab,
            "eot_id": self.eot_id, "pattern": self._pattern, "fingerprint": self.fingerprint(), "meta": self.meta})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        """Load our saved folder, a Hugging Face folder (tokenizer.json), GPT-2's vocab.bpe + encoder.json,
        or a run / checkpoint folder holding a tokenizer/ subfolder."""
        path = Path(directory).expanduser()
        if (path / META_FILE).exists():
            return _load_saved(path)
        if (path / "tokenizer.json").exists():
            return cls.from_hf(path)
        if (path / "vocab.bpe").exists() and (path / "encoder.json").exists():
            return gpt2_from_files(path)
        if (path / "tokenizer").is_dir():
            return cls.load(path / "tokenizer")
        raise SLMError(f"no tokenizer found in {path}: expected a saved tokenizer ({META_FILE}), a Hugging Face "
                       "tokenizer.json, or GPT-2's vocab.bpe + encoder.json. Check tokenizer.path.")

    @classmethod
    def from_hf(cls, directory: str | Path, eot_token: Optional[str] = None) -> "Tokenizer":
        """A Hugging Face folder's `tokenizer.json`, run by `tokenizers` (kind 'hf')."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(directory).expanduser()
        if not (path / "tokenizer.json").exists():
            raise SLMError(f"{path} has no tokenizer.json: point at a Hugging Face model folder that includes one")
        files = {name: (path / name).read_bytes() for name in HF_FILES if (path / name).exists()}
        try:
            hf = HFTokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception as exc:  # tokenizers raises plain Exception on a malformed file
            raise SLMError(f"{path / 'tokenizer.json'} could not be read ({exc}): is it a Hugging Face tokenizer?") from exc
        hf.encode_special_tokens = True  # special tokens written in text stay text, as with our kinds
        hf.no_padding()
        hf.no_truncation()
        eot_token = eot_token or _hf_eos_token(files, hf)
        if eot_token is None:
            raise SLMError(f"the tokenizer in {path} has no end-of-text token: add 'eos_token' to its "
                           "tokenizer_config.json")
        return cls("hf", meta={"eot_token": eot_token}, hf=hf, hf_files=files, eot_id=hf.token_to_id(eot_token))

    def save_hf(self, directory: str | Path) -> Path:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json so that
        `transformers.AutoTokenizer.from_pretrained(directory)` gives the same ids for ordinary text."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._enc is None:  # already a Hugging Face tokenizer: its own files
            files = {name: content.decode("utf-8") for name, content in self._hf_files.items()}
        else:
            hf = _hf_char(self) if self.kind == "char" else _hf_byte_level(self)
            files = {"tokenizer.json": hf.to_str(pretty=True), **_hf_configs()}
        for name, text in files.items():
            atomic_write_text(directory / name, text)
        return directory

    @property
    def ranks(self) -> dict[bytes, int]:
        """token bytes → id (tiktoken-backed kinds only)."""
        if self._ranks is None:
            raise SLMError("a Hugging Face tokenizer has no tiktoken ranks")
        return self._ranks


# ---- Hugging Face export ------------------------------------------------------------------------

def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """HF BPE applies listed merges while tiktoken merges any adjacent pair whose concatenation is a
    token (lowest rank first). Listing every split of every token, ordered by the rank of the result,
    makes the two pick the same merges, hence the same ids."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges.extend(sorted(splits, key=lambda ab: (ranks[ab[0]], ranks[ab[1]])))
    return merges


def _hf_byte_level(tok: Tokenizer):
    """gpt2 / bpe as a byte-level HF BPE: GPT-2's vocab.json/merges.txt layout, tiktoken's ids."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    table = bytes_to_unicode()
    as_str = lambda token: "".join(table[b] for b in token)  # noqa: E731
    vocab = {as_str(token): rank for token, rank in tok.ranks.items()}
    merges = [(as_str(a), as_str(b)) for a, b in _merges_from_ranks(tok.ranks)]
    # ignore_merges: a whole piece that is a token is taken at once, as tiktoken does.
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return hf


def _hf_char(tok: Tokenizer):
    """char as an HF BPE without merges: known characters are tokens, anything else falls back to
    sentencepiece-style <0xNN> byte tokens, which have our byte-fallback ids."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    n_chars = tok.meta.get("n_chars", 0)
    vocab = {(token.decode("utf-8") if rank < n_chars else f"<0x{token[0]:02X}>"): rank
             for token, rank in tok.ranks.items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return hf


def _hf_configs() -> dict[str, str]:
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}  # as GPT-2's own HF tokenizer
    # split_special_tokens: '<|endoftext|>' written in text stays text, as in our encode().
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000,
              "clean_up_tokenization_spaces": False, "split_special_tokens": True, "add_bos_token": False,
              "add_eos_token": False, **special}
    return {"tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2)}


def _hf_special_tokens(files: dict[str, bytes]) -> dict:
    found = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins, as in transformers
        raw = json.loads(files.get(name, b"{}") or b"{}")
        for key in HF_SPECIAL_KEYS:
            value = raw.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if value:
                found[key] = value
    return found


def _hf_chat_template(files: dict[str, bytes]) -> Optional[str]:
    if files.get("chat_template.jinja"):
        return files["chat_template.jinja"].decode("utf-8")
    template = json.loads(files.get("tokenizer_config.json", b"{}") or b"{}").get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses 'default'
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template or None


def _hf_decoder_kinds(tokenizer_json: bytes) -> set[str]:
    decoder = json.loads(tokenizer_json or b"{}").get("decoder") or {}
    return {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}


def _hf_eos_token(files: dict[str, bytes], hf) -> Optional[str]:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        eos = json.loads(files.get(name, b"{}")).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if eos and hf.token_to_id(eos) is not None:
            return eos
    return next((t for t in HF_EOS_CANDIDATES if hf.token_to_id(t) is not None), None)


def _load_saved(path: Path) -> Tokenizer:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SLMError(f"{path / META_FILE} is unreadable ({exc}): save the tokenizer again") from exc
    if meta.get("kind") == "hf":
        return Tokenizer.from_hf(path, eot_token=meta.get("meta", {}).get("eot_token"))
    damaged = f"the tokenizer in {path} is damaged ({{}}): copy it again from the run it came from"
    ranks = _read_ranks(path / RANKS_FILE)
    try:  # tiktoken asserts that the ids run 0..N-1 without gaps
        tok = Tokenizer(meta["kind"], ranks, meta["pattern"], meta=meta.get("meta"))
    except (AssertionError, KeyError, ValueError) as exc:
        raise SLMError(damaged.format(f"{RANKS_FILE} or {META_FILE} is incomplete: {exc!r}")) from exc
    if meta.get("fingerprint") not in (None, tok.fingerprint()):
        raise SLMError(damaged.format(f"its fingerprint does not match {RANKS_FILE}"))
    return tok


def _read_ranks(path: Path) -> dict[bytes, int]:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in lines if line)}
    except (OSError, ValueError) as exc:
        raise SLMError(f"{path} is missing or damaged ({exc}): save the tokenizer again") from exc


# ---- the three trainable / downloadable kinds ----------------------------------------------------

def gpt2_from_files(folder: str | Path) -> Tokenizer:
    """GPT-2's BPE from the original vocab.bpe + encoder.json in `folder`: no network needed."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = Path(folder).expanduser()
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
        tok = Tokenizer("gpt2", ranks, _gpt2_pattern(), meta={"source": "files"})
    except (OSError, ValueError, KeyError, AssertionError) as exc:
        raise SLMError(f"could not read GPT-2's vocab.bpe + encoder.json in {folder} ({exc!r}): use the original "
                       "files from OpenAI's GPT-2 release") from exc
    return tok


def gpt2_from_tiktoken(progress: bool = False) -> Tokenizer:
    """GPT-2's BPE through tiktoken's cache or download. Fails within seconds with the offline option;
    the download runs in a daemon thread so a network that swallows packets cannot hang the caller.
    With HF_HUB_OFFLINE set, only the cache is read: no download is tried."""
    _refuse_download_when_offline()
    result: dict = {}

    def fetch() -> None:
        try:
            from tiktoken_ext.openai_public import gpt2

            result["ranks"] = gpt2()["mergeable_ranks"]
        except BaseException as exc:  # requests.ConnectionError, OSError, hash mismatch, ...
            result["error"] = exc

    if progress:
        print("loading the GPT-2 vocabulary (downloaded once, ~1.5 MB, then cached by tiktoken)", file=sys.stderr)
    thread = threading.Thread(target=fetch, daemon=True, name="gpt2-vocab")
    thread.start()
    thread.join(GPT2_DOWNLOAD_TIMEOUT_S)
    if "ranks" not in result:
        why = f"{type(result['error']).__name__}: {result['error']}" if "error" in result else \
            f"no answer in {GPT2_DOWNLOAD_TIMEOUT_S:.0f} s"
        raise SLMError(f"could not download the GPT-2 vocabulary ({why[:300]}). {OFFLINE_HINT}")
    return Tokenizer("gpt2", result["ranks"], _gpt2_pattern(), meta={"source": "tiktoken"})


# What tiktoken's gpt2() downloads on first use (URL -> sha256), cached in its cache folder under the
# SHA-1 of the URL; listed here so an offline process can tell whether the cache holds them without a
# download attempt (tiktoken re-fetches a missing or damaged entry).
GPT2_DOWNLOADS = {
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe":
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json":
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def _tiktoken_cache_dir() -> str:
    """tiktoken's own choice of cache folder ('' means it caches nothing)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _refuse_download_when_offline() -> None:
    """With HF_HUB_OFFLINE set, GPT-2's vocabulary comes from tiktoken's cache or not at all."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in OFFLINE_VALUES:
        return
    from tiktoken.load import check_hash

    cache = _tiktoken_cache_dir()
    for url, sha256 in GPT2_DOWNLOADS.items():
        entry = Path(cache, hashlib.sha1(url.encode()).hexdigest())
        try:
            if cache and check_hash(entry.read_bytes(), sha256):
                continue
        except OSError:
            pass
        raise SLMError(f"tokenizer.kind=gpt2 needs GPT-2's vocabulary, which is not in tiktoken's cache "
                       f"({cache or 'caching off'}: {url.rsplit('/', 1)[1]} missing or damaged), and HF_HUB_OFFLINE is "
                       "set, so nothing is downloaded. Set TIKTOKEN_CACHE_DIR to a folder holding GPT-2's vocab.bpe "
                       "and encoder.json under tiktoken's names (the SHA-1 of their URLs), or: " + OFFLINE_HINT)


class _TextFeed:
    """Iterates the training texts in batches (capped at `max_chars`), noting whether any was non-blank."""

    def __init__(self, texts: Iterable[str], max_chars: int = MAX_TRAIN_CHARS, batch: int = 1000):
        self.texts, self.max_chars, self.batch = texts, max_chars, batch
        self.chars, self.has_text = 0, False

    def __iter__(self) -> Iterator[list[str]]:
        chunk: list[str] = []
        for text in self.texts:
            if not isinstance(text, str):
                raise SLMError(f"tokenizer training needs text documents, got {type(text).__name__}")
            text = text[: self.max_chars - self.chars]
            self.chars += len(text)
            self.has_text = self.has_text or bool(text.strip())
            chunk.append(text)
            if len(chunk) >= self.batch:
                yield chunk
                chunk = []
            if self.chars >= self.max_chars:
                break
        if chunk:
            yield chunk


def _no_text_error(kind: str) -> SLMError:
    return SLMError(f"cannot build a '{kind}' tokenizer: the training text is empty or only whitespace. "
                    "Point data.source at a non-empty corpus, or use tokenizer.kind 'gpt2'.")


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, progress: bool = True,
              max_chars: int = MAX_TRAIN_CHARS) -> Tokenizer:
    """A byte-level BPE of `vocab_size` ids in all (the 256 bytes, merges, and <|endoftext|> last),
    trained by Hugging Face `tokenizers` and run by tiktoken with the same ids."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if not 256 <= vocab_size <= 65536:
        raise SLMError(f"tokenizer.vocab_size={vocab_size} is invalid: a trained BPE needs 256..65536 tokens")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split
    # min_frequency=2: a pair seen once is noise; a small corpus may then end below vocab_size.
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - 1, 256), min_frequency=2, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    feed = _TextFeed(texts, max_chars)  # a stream: only the batch being counted is in memory
    hf.train_from_iterator(feed, trainer)
    if not feed.has_text:
        raise _no_text_error("bpe")
    # HF's ids are 0..N-1 (alphabet, then merges in order): they become tiktoken's ranks unchanged.
    ranks = {bytes(_UNICODE_TO_BYTE[c] for c in token): i for token, i in hf.get_vocab().items()}
    meta = {"requested_vocab_size": vocab_size, "trained_on_chars": feed.chars}
    return Tokenizer("bpe", ranks, _gpt2_pattern(), meta=meta)


def build_char(texts: Iterable[str], max_chars: int = MAX_TRAIN_CHARS) -> Tokenizer:
    """Characters of the corpus in code-point order (ids 0..C-1), then each byte no character covers
    (the fallback that lets unseen characters round-trip), then <|endoftext|>."""
    chars: set[str] = set()
    for text in _TextFeed(texts, max_chars):
        for doc in text:
            chars.update(doc)
    chars = {c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF}  # lone surrogates are not encodable text
    if all(c.isspace() for c in chars):
        raise _no_text_error("char")
    ranks = {c.encode("utf-8"): i for i, c in enumerate(sorted(chars))}
    for byte in range(256):  # tiktoken needs every single byte as a token; ASCII characters already are
        ranks.setdefault(bytes([byte]), len(ranks))
    return Tokenizer("char", ranks, CHAR_PATTERN, meta={"n_chars": len(chars)})


def build_tokenizer(cfg: TokenizerConfig, texts: Optional[Iterable[str]] = None, progress: bool = True) -> Tokenizer:
    """cfg.path set: load that folder (saved tokenizer, HF folder, GPT-2 files, run). Else by cfg.kind;
    'bpe' and 'char' are built from `texts`."""
    if cfg.path:
        path = readable(Path(cfg.path).expanduser())
        if not path.is_dir():
            raise SLMError(f"tokenizer.path={cfg.path!r} is not a folder: give a saved tokenizer folder, a Hugging "
                           "Face folder or a folder with GPT-2's vocab.bpe + encoder.json")
        return Tokenizer.load(path)
    if cfg.kind == "gpt2":
        return gpt2_from_tiktoken(progress)
    if texts is None:
        raise SLMError(f"tokenizer.kind '{cfg.kind}' is built from the training text, and none was given")
    if cfg.kind == "bpe":
        return train_bpe(texts, cfg.vocab_size, progress, max_chars=cfg.train_chars)
    if cfg.kind == "char":
        return build_char(texts, max_chars=cfg.train_chars)
    raise SLMError(f"tokenizer.kind={cfg.kind!r} is invalid: use 'gpt2', 'bpe' or 'char'")

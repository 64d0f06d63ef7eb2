"""Tokenizer metadata for a GGUF file, as llama.cpp's convert_hf_to_gguf.py writes it per family: byte-level
BPE ('gpt2' model) with the family's pre-tokenizer name (gpt-2, llama-bpe, qwen2, smollm), or a SentencePiece-
style byte-fallback BPE ('llama' model, Llama 1/2) with scores and token types; special ids, add_bos and the
chat template come from gguf-py's own SpecialVocab reading the tokenizer's files, exactly as the converter does."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.models.tokenizer import _merges_from_ranks, bytes_to_unicode

# llama.cpp names a BPE pre-tokenizer by hashing the ids of a test text (a table regenerated from each
# model's Hub files); a folder whose post-processor differs (no BOS, as one read back from a GGUF) then hashes
# differently. The pre-tokenizer's structure in tokenizer.json names the same regexes deterministically.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {  # tokenizer.json pre_tokenizer steps → llama.cpp's tokenizer.ggml.pre
    (("ByteLevel", True),): "gpt-2",
    (("Split", _LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
    (("Split", _QWEN2_SPLIT), ("ByteLevel", False)): "qwen2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
}
# What llama.cpp's loader assumes when the file says nothing (src/llama-vocab.cpp); written explicitly.
_DEFAULT_ADD_BOS = {"llama-bpe": True, "default": True}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def add_tokenizer(writer, tokenizer, vocab_size: int, hf_config: Optional[dict] = None) -> str:
    """Write the tokenizer.* keys; returns the pre-tokenizer name written."""
    if tokenizer.kind != "hf":
        return _add_own_byte_level(writer, tokenizer, vocab_size)
    spec = json.loads(tokenizer._hf_files.get("tokenizer.json", b"{}"))
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        tokens, scores, types = sentencepiece_vocab(spec, vocab_size)
        writer.add_tokenizer_model("llama")
        pre = "default"
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
    elif model.get("type") == "BPE":
        pre = pre_tokenizer_name(spec)
        tokens, types = byte_level_vocab(spec, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    else:
        raise SLMError(f"GGUF export has no llama.cpp tokenizer for a {model.get('type')!r} tokenizer.json (it writes "
                       "byte-level BPE and byte-fallback BPE): export as 'hf' or 'onnx' instead")
    _add_special_vocab(writer, tokenizer, vocab_size, hf_config, pre, load_merges=pre != "default")
    return pre


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer.json's pre-tokenizer, or SLMError."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    signature = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split":
            signature.append((kind, (step.get("pattern") or {}).get("Regex")))
        elif kind == "ByteLevel":
            signature.append((kind, bool(step.get("use_regex", True))))
        elif kind == "Digits":
            signature.append((kind, bool(step.get("individual_digits"))))
        else:
            signature.append((kind, None))
    name = PRE_TOKENIZERS.get(tuple(signature))
    if name is None:
        raise SLMError(f"this tokenizer's pre-tokenizer ({', '.join(s[0] for s in signature) or 'none'}) is not one "
                       f"GGUF export knows ({', '.join(sorted(PRE_TOKENIZERS.values()))}): export as 'hf' and "
                       "convert with llama.cpp's convert_hf_to_gguf.py")
    return name


def _vocab_by_id(spec: dict, vocab_size: int) -> tuple[dict[int, str], dict[int, dict]]:
    vocab = {i: text for text, i in (spec.get("model") or {}).get("vocab", {}).items()}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    if max([*vocab, *added], default=-1) >= vocab_size:
        raise SLMError(f"the tokenizer has ids up to {max([*vocab, *added])} but the model only {vocab_size} "
                       "embedding rows: pair the model with its own tokenizer")
    return vocab, added


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf's does_token_look_special: <|...|> added tokens are control tokens whatever their flag."""
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def byte_level_vocab(spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens, types) as convert_hf_to_gguf's get_vocab_base: added tokens CONTROL (special) or USER_DEFINED,
    ids the tokenizer lacks [PAD<i>] UNUSED."""
    import gguf

    vocab, added = _vocab_by_id(spec, vocab_size)
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            special = added[i].get("special") or _looks_special(added[i]["content"])
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in vocab:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def sentencepiece_vocab(spec: dict, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) for llama.cpp's SentencePiece tokenizer from a byte-fallback BPE tokenizer.json
    (a Llama 1/2 folder's). llama.cpp merges the adjacent pair whose joined piece scores highest; the merge list
    is ordered by SentencePiece's piece scores, i.e. by id, so -(id - first piece) reproduces those scores, and
    pieces whose merges the list puts after every other piece's (SentencePiece's -1e9 pieces) keep -1e9.
    (convert_hf_to_gguf reads tokenizer.model for this; without one it writes -1000 for every piece.)"""
    import gguf

    vocab, added = _vocab_by_id(spec, vocab_size)
    model = spec.get("model") or {}
    by_text = model.get("vocab", {})
    unk = model.get("unk_token")
    first_merge = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_merge.setdefault(by_text.get(left + right), rank)
    first_merge.pop(None, None)
    last_in_order = first_merge[max(first_merge)] if first_merge else -1
    tokens, scores, types = [], [], []
    first_piece = None
    for i in range(vocab_size):
        text = added[i]["content"] if i in added else vocab.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]"), scores.append(-1000.0), types.append(gguf.TokenType.UNUSED)
            continue
        if text == unk or (i in added and text == "<unk>"):
            kind = gguf.TokenType.UNKNOWN
        elif i in added:
            kind = (gguf.TokenType.CONTROL if added[i].get("special") or _looks_special(text)
                    else gguf.TokenType.USER_DEFINED)
        elif _BYTE_TOKEN.fullmatch(text):
            kind = gguf.TokenType.BYTE
        else:
            kind = gguf.TokenType.NORMAL
        if kind == gguf.TokenType.NORMAL:
            first_piece = i if first_piece is None else first_piece
            score = -1e9 if first_merge.get(i, -1) > last_in_order else -float(i - first_piece)
        else:
            score = 0.0 if kind != gguf.TokenType.USER_DEFINED else -1000.0
        tokens.append(text), scores.append(score), types.append(kind)
    return tokens, scores, [int(t) for t in types]


def _add_special_vocab(writer, tokenizer, vocab_size: int, hf_config: Optional[dict], pre: str,
                       load_merges: bool) -> None:
    """Merges, bos/eos/unk/pad ids, add_bos/add_eos and the chat template through gguf.SpecialVocab over the
    tokenizer's own files (and the model's config.json ids), as the converter reads a downloaded folder."""
    import gguf

    with tempfile.TemporaryDirectory(prefix="slm-gguf-vocab-") as tmp:
        folder = Path(tmp)
        for name, content in tokenizer._hf_files.items():
            (folder / name).write_bytes(content)
        ids = {k: v for k, v in (hf_config or {}).items() if k.endswith("_token_id") and isinstance(v, int)}
        (folder / "config.json").write_text(json.dumps(ids))
        special = gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=vocab_size)
    special.add_special_token.setdefault("bos", _DEFAULT_ADD_BOS.get(pre, False))
    if pre == "default":
        special.add_special_token.setdefault("eos", False)
    if special.chat_template is None and tokenizer.chat_template:
        special.chat_template = tokenizer.chat_template
    eot = _end_of_turn_id(tokenizer, special.special_token_ids.get("eos"))
    special.add_to_gguf(writer, quiet=True)
    if eot is not None:
        writer.add_eot_token_id(eot)


def _end_of_turn_id(tokenizer, eos: Optional[int]) -> Optional[int]:
    """The token the chat template ends a turn with when it is not eos (<|eot_id|>, <|im_end|>)."""
    turn_ends = [i for i in tokenizer.stop_ids if i != eos and i != tokenizer.eot_id]
    return turn_ends[0] if turn_ends else None


# ---- our own byte-level BPE (tiktoken ranks) ---------------------------------------------------------------

def _byte_level(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def own_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a tokenizer of ours (bpe, char, gpt2 ranks), padded to vocab_size."""
    import gguf

    table = bytes_to_unicode()
    by_id = {rank: token for token, rank in tokenizer.ranks.items()}
    tokens = [_byte_level(by_id[i], table) for i in range(len(by_id))]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens.append("<|endoftext|>")  # the eot id is the last one for our kinds
    types.append(int(gguf.TokenType.CONTROL))
    pairs = _merges_from_ranks(tokenizer.ranks) + _chain_merges(tokenizer.ranks)
    merges = [f"{_byte_level(a, table)} {_byte_level(b, table)}" for a, b in pairs]
    if len(tokens) > vocab_size:
        raise SLMError(f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embedding rows")
    for i in range(len(tokens), vocab_size):  # rows the model has beyond the tokenizer (padding)
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, types, merges


def _chain_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges that build a multi-byte token no two tokens concatenate to (a char tokenizer's 3- and
    4-byte characters), byte by byte. tiktoken takes such a token whole; llama.cpp only reaches it
    through merges, and its intermediate symbols need not be tokens."""
    chains = []
    for token in sorted(ranks, key=ranks.get):
        if len(token) > 1 and not any(token[:i] in ranks and token[i:] in ranks for i in range(1, len(token))):
            chains += [(token[:i], token[i:i + 1]) for i in range(1, len(token))]
    return list(dict.fromkeys(chains))


def _add_own_byte_level(writer, tokenizer, vocab_size: int) -> str:
    tokens, types, merges = own_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)  # GPT-2 style: nothing is prepended to a prompt
    return "gpt-2"

"""Reading a text file as documents, in byte ranges, split by paragraph, line or an end-of-text marker."""

from __future__ import annotations

import codecs
import itertools
import re
from pathlib import Path
from typing import Iterator, Optional

from slm_core.errors import SLMError

BLOCK_BYTES = 4 << 20  # read size; a document may span many blocks
HEAD_BYTES = 4 << 20  # how far into a file '<|endoftext|>' markers are looked for
LOOKBACK_BYTES = 64 << 10  # a shard starts scanning this far before its range to find the first boundary
PARAGRAPH = re.compile(rb"\n[ \t\r\f\v]*\n")
LINE = re.compile(rb"\n")
DOC_SEPARATOR = "<|endoftext|>"  # TinyStories-style text dumps separate stories with this marker
MARKER = DOC_SEPARATOR.encode()


def separator(split: str, head: bytes) -> Optional[re.Pattern]:
    """The byte pattern between documents (None: the whole file is one document)."""
    if split == "paragraph":
        return re.compile(re.escape(MARKER)) if MARKER in head else PARAGRAPH
    if split == "line":
        return LINE
    if split == "whole":
        return None
    # A separator typed in YAML or --set may carry escapes such as "\n---\n".
    text = codecs.decode(split, "unicode_escape") if "\\" in split else split
    return re.compile(re.escape(text.encode("utf-8")))


def iter_text_file(path: Path, split: str = "paragraph", lo: int = 0, hi: Optional[int] = None
                   ) -> Iterator[tuple[int, str]]:
    """(byte offset, text) of each non-blank document of `path` that starts in bytes [lo, hi)."""
    size = path.stat().st_size
    hi = size if hi is None else min(hi, size)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        if b"\x00" in head:
            raise SLMError(f"{path} looks binary (it contains NUL bytes): give a UTF-8 text file")
        pattern = separator(split, head)
        start = 0 if pattern is None or lo <= 0 else max(0, lo - LOOKBACK_BYTES)
        f.seek(start)
        blocks = iter(lambda: f.read(BLOCK_BYTES), b"")
        for offset, raw in split_text_blocks(blocks, pattern, start, lo, hi):
            text = _decode(raw, path, offset)
            if text.strip():
                yield offset, text


def split_text_blocks(blocks, pattern: Optional[re.Pattern], base: int, lo: int, hi: int
                      ) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of documents starting in [lo, hi), from `blocks` read from byte `base` on.

    A document starts at the file's start or right after a separator match; a match touching the end
    of what was read is acted on only once more bytes (or the end) come, so a separator cut by a block
    boundary is still found whole."""
    if pattern is None:  # the whole file is one document, in the shard where byte 0 lies
        if base == 0 and lo <= 0:
            yield 0, b"".join(blocks)
        return
    buf, current = b"", (0 if base == 0 and lo <= 0 else None)  # current: where the open document began
    for block in itertools.chain(blocks, [None]):
        final = block is None
        buf += block or b""
        done = 0  # bytes of buf already dealt with
        for match in pattern.finditer(buf):
            if match.end() == len(buf) and not final:  # it might still grow: wait for more bytes
                break
            if current is not None:
                yield current, buf[current - base:match.start()]
            current = base + match.end()
            if current < lo:
                current = None
            elif current >= hi:
                return
            done = match.end()
        keep = done if current is None else current - base
        buf, base = buf[keep:], base + keep
    if current is not None and current < hi:
        yield current, buf[current - base:]


def _decode(raw: bytes, path: Path, offset: int) -> str:
    if b"\x00" in raw:
        raise SLMError(f"{path} looks binary (it contains NUL bytes near byte {offset}): give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SLMError(f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}): re-save it as UTF-8") from None
    if offset == 0:
        text = text.lstrip("\ufeff")
    return text.strip("\r\n")

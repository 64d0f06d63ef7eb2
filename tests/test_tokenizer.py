"""Tokenizers: every kind round-trips any Unicode text, GPT-2 gives GPT-2's ids (offline, from the genuine
files), save/load and the Hugging Face export give the same ids, the end-of-text token is never parsed
from text, a trained BPE respects its vocabulary size, and GPT-2 without a network fails fast and clearly."""

import errno
import functools
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from slm_core.config import TokenizerConfig
from slm_core.data.corpus import builtin_stories
from slm_core.errors import SLMError
from slm_core.models.tokenizer import EOT, Tokenizer, build_tokenizer, bytes_to_unicode, gpt2_from_files

TRICKY = [
    "Hello world",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇳🇿 keycap 1️⃣",
    "中文字符，日本語のテキスト、한국어 텍스트",
    "combining e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 and precomposed é ä ñ",
    "control \x00\x01\x07\x1b[31m\x7f tabs\t\tand\r\nCRLF\x0b\x0c",
    "mixed: it's 12,345.67 — “quotes” ‘single’ «guillemets» مرحبا עברית Ελληνικά кириллица 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "   leading and trailing spaces   \n\n\n",
    "special text <|endoftext|> stays text <|endoftext",
    "",
]
STORIES = builtin_stories(300_000, seed=3)


@functools.lru_cache(maxsize=None)
def _gpt2(folder: str) -> Tokenizer:
    return gpt2_from_files(folder)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=1024), STORIES, progress=False)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return build_tokenizer(TokenizerConfig(kind="char"), STORIES, progress=False)


@pytest.fixture
def gpt2(shared_data) -> Tokenizer:
    return _gpt2(str(shared_data / "gpt2"))


@pytest.fixture(params=["bpe", "char", "gpt2"])
def any_tok(request) -> Tokenizer:
    return request.getfixturevalue(request.param)


@pytest.fixture
def gpt2_cache(shared_data, tmp_path, monkeypatch) -> Path:
    """tiktoken's download cache filled with the genuine files (data/README.md's recipe)."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    shutil.copy(shared_data / "gpt2" / "vocab.bpe", cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(shared_data / "gpt2" / "encoder.json", cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return cache


# ---- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", TRICKY)
def test_decode_encode_round_trips_any_text(any_tok, text):
    assert any_tok.decode(any_tok.encode(text)) == text


def test_token_bytes_concatenate_to_the_utf8_text(any_tok):
    """A streamer decodes one token at a time: the pieces must add up to the exact bytes."""
    text = "".join(TRICKY)
    pieces = [any_tok.decode_bytes([i]) for i in any_tok.encode(text)]
    assert b"".join(pieces) == text.encode("utf-8")


def test_encode_batch_equals_encode(any_tok):
    texts = TRICKY + STORIES[:100]
    assert any_tok.encode_batch(texts) == [any_tok.encode(t) for t in texts]


def test_ids_outside_the_vocabulary_decode_to_nothing(any_tok):
    ids = any_tok.encode("abc")
    assert any_tok.decode(ids + [any_tok.n_vocab, any_tok.n_vocab + 40]) == "abc"


# ---- end of text ----------------------------------------------------------------------------------

def test_eot_exists_and_is_never_parsed_from_text(any_tok):
    assert any_tok.eot_id == any_tok.n_vocab - 1
    assert any_tok.decode([any_tok.eot_id]) == EOT
    assert any_tok.eot_id not in any_tok.encode(f"one{EOT}two {EOT}")
    assert any_tok.eot_id not in any_tok.encode_batch([EOT])[0]


# ---- GPT-2 ----------------------------------------------------------------------------------------

def test_gpt2_gives_gpt2_ids(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("Hello, world!") == [15496, 11, 995, 0]


def test_gpt2_from_files_matches_tiktoken(gpt2, gpt2_cache, shared_data):
    import tiktoken

    reference = tiktoken.get_encoding("gpt2")
    text = (shared_data / "tinyshakespeare.txt").read_text()[:200_000] + "".join(TRICKY)
    assert gpt2.encode(text) == reference.encode_ordinary(text)
    via_tiktoken = build_tokenizer(TokenizerConfig(kind="gpt2"), progress=False)
    assert via_tiktoken.fingerprint() == gpt2.fingerprint()
    assert via_tiktoken.encode(text[:5000]) == gpt2.encode(text[:5000])


def test_gpt2_offline_without_files_fails_fast_with_the_offline_option(tmp_path, monkeypatch, network):
    """No network, not declared: one download attempt, refused at once, the error names the offline options."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(SLMError, match="could not download the GPT-2 vocabulary") as info:
        build_tokenizer(TokenizerConfig(kind="gpt2"), progress=False)
    message = str(info.value)
    assert "tokenizer.path" in message and "vocab.bpe" in message and "'bpe'" in message
    assert len(network) == 1, network  # the vocabulary's host looked up once: no retry loop


def test_gpt2_download_that_never_answers_is_given_up_with_the_offline_option(tmp_path, monkeypatch):
    """A network that swallows packets: the caller stops waiting after GPT2_DOWNLOAD_TIMEOUT_S (shortened here)
    while the lookup is still blocked, and gets the offline options instead of a hang."""
    from slm_core.models import tokenizer as tokenizer_module

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tokenizer_module, "GPT2_DOWNLOAD_TIMEOUT_S", 0.05)
    release = threading.Event()

    def never_answers(*args, **kwargs):
        release.wait()
        raise socket.gaierror(errno.ENETUNREACH, "network is unreachable (refused by the test)")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    try:
        with pytest.raises(SLMError, match="no answer in") as info:
            build_tokenizer(TokenizerConfig(kind="gpt2"), progress=False)
        assert "tokenizer.path" in str(info.value) and "'bpe'" in str(info.value)
    finally:
        release.set()  # the abandoned download ends (refused) before the real resolver is back
        for thread in threading.enumerate():
            if thread.name == "gpt2-vocab":
                thread.join()


@pytest.mark.parametrize("cache", ["empty", "damaged", "off"])
def test_gpt2_with_hf_hub_offline_opens_no_socket_and_names_the_offline_options(tmp_path, monkeypatch, network,
                                                                                 shared_data, cache):
    """HF_HUB_OFFLINE=1 and no usable tiktoken cache (none, one byte flipped, caching off): refused before
    any download is tried, in one line naming TIKTOKEN_CACHE_DIR and the other offline options."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tiktoken-cache"
    folder.mkdir()
    if cache == "damaged":
        shutil.copy(shared_data / "gpt2" / "vocab.bpe", folder / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
        damaged = bytearray((shared_data / "gpt2" / "encoder.json").read_bytes())
        damaged[100] ^= 1
        (folder / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6").write_bytes(bytes(damaged))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "" if cache == "off" else str(folder))
    with pytest.raises(SLMError, match="HF_HUB_OFFLINE") as info:
        build_tokenizer(TokenizerConfig(kind="gpt2"), progress=False)
    message = str(info.value)
    assert "\n" not in message and "TIKTOKEN_CACHE_DIR" in message and "tokenizer.path" in message
    assert "'char'" in message and network == []  # no name looked up, no socket connected
    if cache == "damaged":  # tiktoken would have deleted the damaged entry to fetch it again
        assert (folder / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6").read_bytes() == bytes(damaged)


def test_gpt2_with_hf_hub_offline_loads_from_tiktokens_cache_without_the_network(gpt2, gpt2_cache, monkeypatch,
                                                                                  network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_tokenizer(TokenizerConfig(kind="gpt2"), progress=False)
    assert tok.fingerprint() == gpt2.fingerprint() and network == []


def test_build_tokenizer_path_loads_gpt2_files(gpt2, shared_data):
    tok = build_tokenizer(TokenizerConfig(kind="gpt2", path=str(shared_data / "gpt2")), progress=False)
    assert tok.kind == "gpt2" and tok.fingerprint() == gpt2.fingerprint()


# ---- trained BPE and characters -------------------------------------------------------------------

def test_bpe_respects_vocab_size_and_has_every_byte(bpe):
    assert bpe.kind == "bpe" and bpe.n_vocab == 1024
    assert set(bpe.ranks) >= {bytes([b]) for b in range(256)}
    small = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), STORIES[:50], progress=False)
    assert small.n_vocab == 300 and small.eot_id == 299


def test_bpe_compresses_its_corpus(bpe):
    text = "".join(STORIES[:20])
    assert len(text) / len(bpe.encode(text)) > 3  # characters per token: merges were learned


def test_bpe_trains_4096_on_5mb_in_one_streamed_pass(monkeypatch):
    """Hugging Face's trainer reads the corpus once, a batch of documents at a time (never all of it as one
    list). How long 5 MB takes is measured in benchmarks/bench_data.py --timings."""
    from slm_core.models import tokenizer as tokenizer_module

    texts = builtin_stories(5_000_000)
    passes: list[list[int]] = []
    real_iter = tokenizer_module._TextFeed.__iter__

    def watched(feed):
        passes.append([])
        for batch in real_iter(feed):
            passes[-1].append(len(batch))
            yield batch

    monkeypatch.setattr(tokenizer_module._TextFeed, "__iter__", watched)
    tok = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=4096), texts, progress=False)
    assert len(passes) == 1 and sum(passes[0]) == len(texts)  # one pass over every document
    assert len(passes[0]) > 1 and max(passes[0]) <= 1000  # in batches
    assert tok.meta["trained_on_chars"] == sum(len(t) for t in texts)
    assert 1024 < tok.n_vocab <= 4096  # the built-in stories' small lexicon runs out of pairs before 4096


def test_char_vocab_is_the_corpus_characters_then_byte_fallback(shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text()
    tok = build_tokenizer(TokenizerConfig(kind="char"), [text], progress=False)
    chars = sorted(set(text))
    assert len(chars) == 65
    assert [tok.encode(c) for c in chars] == [[i] for i in range(65)]  # nanoGPT's ids
    assert tok.n_vocab == 65 + (256 - 65) + 1  # plus one token per byte no character covers, plus eot
    assert tok.decode(tok.encode("Zoë 😀")) == "Zoë 😀" and len(tok.encode("ë")) == 2


@pytest.mark.parametrize("kind", ["bpe", "char"])
@pytest.mark.parametrize("texts", [[], [""], ["  \n\t ", "\n"]])
def test_training_on_empty_or_blank_text_is_a_clear_error(kind, texts):
    with pytest.raises(SLMError, match="empty or only whitespace"):
        build_tokenizer(TokenizerConfig(kind=kind), texts, progress=False)


def test_training_without_texts_is_a_clear_error():
    with pytest.raises(SLMError, match="training text"):
        build_tokenizer(TokenizerConfig(kind="bpe"), None, progress=False)


# ---- saving and loading -----------------------------------------------------------------------------

def test_save_load_gives_identical_ids(any_tok, tmp_path):
    any_tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    text = "".join(TRICKY) + STORIES[0]
    assert (loaded.kind, loaded.n_vocab, loaded.eot_id) == (any_tok.kind, any_tok.n_vocab, any_tok.eot_id)
    assert loaded.encode(text) == any_tok.encode(text)
    assert loaded.fingerprint() == any_tok.fingerprint()
    via_cfg = build_tokenizer(TokenizerConfig(kind="char", path=str(tmp_path / "tok")), progress=False)
    assert via_cfg.kind == any_tok.kind  # path wins over kind


def test_a_run_folder_with_a_tokenizer_subfolder_loads(bpe, tmp_path):
    bpe.save(tmp_path / "run" / "tokenizer")
    assert Tokenizer.load(tmp_path / "run").fingerprint() == bpe.fingerprint()


def test_fingerprint_tells_vocabularies_apart(bpe, char):
    other = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=1000), STORIES, progress=False)
    prints = {bpe.fingerprint(), char.fingerprint(), other.fingerprint()}
    assert len(prints) == 3
    again = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=1024), STORIES, progress=False)
    assert again.fingerprint() == bpe.fingerprint()  # training is deterministic


def test_a_damaged_or_missing_tokenizer_is_a_clear_error(bpe, tmp_path):
    with pytest.raises(SLMError, match="no tokenizer found"):
        Tokenizer.load(tmp_path)
    with pytest.raises(SLMError, match="not a folder"):
        build_tokenizer(TokenizerConfig(path=str(tmp_path / "nowhere")))
    bpe.save(tmp_path / "tok")
    ranks = tmp_path / "tok" / "ranks.tiktoken"
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join(lines[:-1]))  # the last token lost
    with pytest.raises(SLMError, match="damaged"):
        Tokenizer.load(tmp_path / "tok")
    ranks.write_text("\n".join(lines[:10] + lines[11:]))  # a gap in the ids
    with pytest.raises(SLMError, match="damaged"):
        Tokenizer.load(tmp_path / "tok")


# ---- Hugging Face -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_hf_export_loads_in_transformers_with_the_same_ids(kind, request, tmp_path):
    from transformers import AutoTokenizer

    tok = request.getfixturevalue(kind)
    tok.save_hf(tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "\n".join(TRICKY + STORIES[:5])
    ids = tok.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.eos_token_id == tok.eot_id and len(hf) == tok.n_vocab
    assert hf.decode(ids) == text


def test_from_hf_runs_a_hugging_face_folder(bpe, tmp_path):
    bpe.save_hf(tmp_path / "hf")
    tok = Tokenizer.from_hf(tmp_path / "hf")
    text = "".join(TRICKY) + STORIES[1]
    assert tok.kind == "hf" and tok.n_vocab == bpe.n_vocab and tok.eot_id == bpe.eot_id
    assert tok.encode(text) == bpe.encode(text) and tok.decode(tok.encode(text)) == text
    assert b"".join(tok.decode_bytes([i]) for i in tok.encode(text)) == text.encode()
    assert tok.eot_id not in tok.encode(EOT)
    tok.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert again.kind == "hf" and again.fingerprint() == tok.fingerprint() and again.encode(text) == tok.encode(text)


def test_from_hf_handles_sentencepiece_style_byte_fallback(tmp_path):
    """Llama-2-style tokenizers: '▁' for spaces and <0xNN> byte tokens for unseen characters."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    hf.train_from_iterator(STORIES[:200], trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                               show_progress=False))
    (tmp_path / "sp").mkdir()
    hf.save(str(tmp_path / "sp" / "tokenizer.json"))
    (tmp_path / "sp" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    tok = Tokenizer.from_hf(tmp_path / "sp")
    text = "Lily saw 😀 and 中文 in the park."
    ids = tok.encode(text)
    assert tok.eot_id == hf.token_to_id("</s>") and tok.decode(ids) == text
    assert b"".join(tok.decode_bytes([i]) for i in ids) == text.encode()


def test_byte_table_is_gpt2s_alphabet():
    from tokenizers import pre_tokenizers

    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord("A")] == "A" and table[ord(" ")] == "\u0120"
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())

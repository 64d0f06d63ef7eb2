"""Data sources → cached token files → batches: every source kind, every user mistake, the cache, sampling."""

import json
import os
import random
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from offline import refuse_network

from slm_core.config import DataConfig, ModelConfig, RunConfig, TokenizerConfig
from slm_core.data import cache as cache_module
from slm_core.data import sources as sources_module
from slm_core.data.cache import data_summary, load_texts, prepare_data, preview, token_dtype
from slm_core.errors import SLMError
from slm_core.models.templates import format_prompt
from slm_core.models.tokenizer import build_tokenizer


def run_config(source, kind="char", context=16, vocab=300, **data) -> RunConfig:
    return RunConfig(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context_length=context),
                     tokenizer=TokenizerConfig(kind=kind, vocab_size=vocab),
                     data=DataConfig(source=str(source), **data))


def prepare(tmp_path, source, tokenizer=None, **kw):
    return prepare_data(run_config(source, **kw), tokenizer=tokenizer, cache_dir=tmp_path / "cache", progress=False)


def words(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(n))


def decode(data, ids) -> str:
    return data.tokenizer.decode([int(i) for i in ids if int(i) != data.tokenizer.eot_id])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path




def expect_error(match, fn, *args, **kw):
    """fn's SLMError, which must come at once: from the input alone, never after reaching for a network."""
    attempts: list = []
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch, attempts)
        with pytest.raises(SLMError, match=match) as info:
            fn(*args, **kw)
    assert attempts == [], f"errors must come from the input, without a network wait: {attempts}"
    return str(info.value)


ROWS = [{"id": i, "title": f"Title {i}", "body": words(i, 30)} for i in range(12)]
ALPACA = [{"instruction": f"Spell {w}.", "input": "", "output": " ".join(w)}
          for w in words(7, 40).split()]
CHATS = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w.upper()}]}
         for w in words(8, 40).split()]


# ---- every kind of source ---------------------------------------------------------------------

def test_text_file_read_whole_is_one_document_whose_end_is_validation(tmp_path):
    text = "\n\n".join(words(i) for i in range(20))
    (tmp_path / "book.txt").write_text(text)
    data = prepare(tmp_path, tmp_path / "book.txt", split="whole")
    assert data.n_documents == 1 and data.n_chars == len(text)
    assert data.train_tokens + data.val_tokens == len(text) + 2  # a char per token, eot after each split
    cut = int(len(text) * 0.95)
    assert decode(data, data.tokens("val")) == text[cut:]
    assert decode(data, data.tokens("train")) == text[:cut]
    assert load_texts(DataConfig(source=str(tmp_path / "book.txt"), split="whole")) == [text]


def test_markdown_with_endoftext_markers_holds_several_documents(tmp_path):
    stories = [words(i, 40) for i in range(3)]
    (tmp_path / "stories.md").write_text("\n<|endoftext|>\n".join(stories))
    assert load_texts(DataConfig(source=str(tmp_path / "stories.md"))) == stories
    summary = data_summary(DataConfig(source=str(tmp_path / "stories.md")))
    assert summary["n_documents"] == 3 and summary["kind"] == "text" and not summary["is_instruction"]


def test_folder_is_read_recursively_skipping_hidden_and_other_files(tmp_path):
    import datasets

    folder = tmp_path / "corpus"
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "a.txt").write_text(words(1))
    (folder / "sub" / "b.md").write_text(words(2))
    write_jsonl(folder / "sub" / "deep" / "c.jsonl", [{"text": words(3)}, {"text": words(4)}])
    (folder / ".git" / "HEAD.txt").write_text("not data")
    (folder / "logo.png").write_bytes(b"\x89PNG\x00\x00binary")
    datasets.Dataset.from_dict({"text": [words(5)]}).save_to_disk(str(folder / "sub" / "saved"))
    assert load_texts(DataConfig(source=str(folder))) == [words(i) for i in range(1, 6)]
    data = prepare(tmp_path, folder)
    assert data.n_documents == 5 and data_summary(DataConfig(source=str(folder)))["kind"] == "folder"


def write_table(path, rows):
    import pandas as pd

    frame = pd.DataFrame(rows)
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".jsonl": lambda: write_jsonl(path, rows), ".json": lambda: path.write_text(json.dumps(rows))}[path.suffix]()
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_tabular_files_read_the_chosen_column(tmp_path, suffix):
    path = write_table(tmp_path / f"table{suffix}", ROWS)
    assert load_texts(DataConfig(source=str(path), text_column="body")) == [r["body"] for r in ROWS]
    # No column named: 'text' when there is one, else the first text column ('id' holds numbers).
    assert load_texts(DataConfig(source=str(path))) == [r["title"] for r in ROWS]
    with_text = write_table(tmp_path / f"with_text{suffix}", [{"n": 1, "text": "alpha beta"}, {"n": 2, "text": "gamma"}])
    assert load_texts(DataConfig(source=str(with_text))) == ["alpha beta", "gamma"]
    summary = data_summary(DataConfig(source=str(path), text_column="body"))
    assert summary["kind"] == "tabular" and summary["columns"] == ["id", "title", "body"]
    assert summary["n_documents"] == len(ROWS) and summary["n_chars"] == sum(len(r["body"]) for r in ROWS)
    data = prepare(tmp_path, path, text_column="body")
    assert data.n_documents == len(ROWS) and data.train_tokens > 0 and data.val_tokens > 0


def test_save_to_disk_folders_dataset_and_dataset_dict(tmp_path):
    import datasets

    texts = [r["body"] for r in ROWS]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(DataConfig(source=str(tmp_path / "ds"))) == texts
    assert data_summary(DataConfig(source=str(tmp_path / "ds")))["kind"] == "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts}),
                          "validation": datasets.Dataset.from_dict({"text": ["held out"]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    assert load_texts(DataConfig(source=str(tmp_path / "dd"))) == texts
    assert load_texts(DataConfig(source=str(tmp_path / "dd"), hub_split="validation")) == ["held out"]
    assert prepare(tmp_path, tmp_path / "dd").n_documents == len(texts)


def test_builtin_corpora(tmp_path):
    data = prepare(tmp_path, "builtin", max_chars=20_000)
    assert data.template is None and data.n_chars <= 20_000 and data.n_documents > 1
    instructions = prepare(tmp_path, "builtin:instructions", max_chars=20_000)
    assert instructions.is_instruction and instructions.template == "alpaca"
    assert instructions.mask("train") is not None


# ---- instruction data: the loss sees only the answers ---------------------------------------------

@pytest.mark.parametrize("records,template", [(ALPACA, "alpaca"), (CHATS, "chatml")])
def test_instruction_records_mask_exactly_the_prompt(tmp_path, records, template):
    path = write_jsonl(tmp_path / "sft.jsonl", records)
    summary = data_summary(DataConfig(source=str(path)))
    assert summary["is_instruction"] and summary["template"] == template
    data = prepare(tmp_path, path)
    assert data.template == template
    tokens, mask = np.asarray(data.tokens("train")), np.asarray(data.mask("train"))
    eot = data.tokenizer.eot_id
    prompts = {format_prompt(r, template): r for r in records}
    segments = np.split(np.arange(len(tokens)), np.flatnonzero(tokens == eot) + 1)[:-1]
    assert len(segments) == data.meta["train_documents"]
    for seg in segments:  # each record: prompt (mask 0), answer + eot (mask 1)
        m = mask[seg]
        n_prompt = int((m == 0).sum())
        assert (m[:n_prompt] == 0).all() and (m[n_prompt:] == 1).all() and tokens[seg[-1]] == eot
        record = prompts[decode(data, tokens[seg[:n_prompt]])]
        answer = record["output"] if template == "alpaca" else record["messages"][-1]["content"]
        assert decode(data, tokens[seg[n_prompt:]]) == answer

    # One window covering the whole split: labels are -100 exactly where the target is a prompt token.
    x, y = data.get_batch("train", 1, len(tokens) - 1, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], torch.from_numpy(tokens[:-1].astype(np.int64)))
    assert torch.equal(y[0] == -100, torch.from_numpy(mask[1:] == 0))
    assert torch.equal(y[0][y[0] != -100], torch.from_numpy(tokens[1:][mask[1:] == 1].astype(np.int64)))
    # ... so the logits at prompt positions do not move the loss.
    logits = torch.randn(1, x.shape[1], data.tokenizer.n_vocab)
    changed = logits.clone()
    changed[y == -100] = torch.randn_like(changed[y == -100]) * 10
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)
    assert torch.allclose(loss, F.cross_entropy(changed.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100))


def test_instruction_batches_always_hold_an_answer(tmp_path):
    # Prompts far longer than the context: windows end on an answer, never only on prompt tokens
    # (a batch with no target would make the mean loss NaN). Random letters make each window unique.
    rng = random.Random(3)
    records = [{"instruction": "Echo the last word.", "input": "".join(rng.choices(string.ascii_lowercase, k=150)),
                "output": words(i, 3)} for i in range(60)]
    data = prepare(tmp_path, write_jsonl(tmp_path / "long.jsonl", records), context=24)
    tokens, eot = np.asarray(data.tokens("train")).tolist(), data.tokenizer.eot_id
    where = {tuple(tokens[i:i + 24]): i for i in range(len(tokens) - 23)}
    generator, n = torch.Generator().manual_seed(0), data.train_tokens
    for rank in range(2):
        lo, hi = n * rank // 2, n * (rank + 1) // 2
        for _ in range(10):
            x, y = data.get_batch("train", 8, 24, generator, rank=rank, world_size=2)
            assert (y[:, -1] == eot).all() and ((y != -100).sum(dim=1) > 1).all()
            assert all(lo <= where[tuple(row)] and where[tuple(row)] + 25 <= hi for row in x.tolist())


def test_template_can_be_chosen(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", ALPACA)
    data = prepare(tmp_path, path, template="chatml")
    assert data.template == "chatml"
    assert "<|im_start|>" in decode(data, data.tokens("train")[:200])


# ---- mistakes a person makes: SLMError in seconds, saying what to do ---------------------------

def test_missing_empty_and_binary_sources(tmp_path):
    expect_error("not found", prepare, tmp_path, tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n\n ")
    expect_error("holds no text", prepare, tmp_path, tmp_path / "empty.txt")
    (tmp_path / "empty_dir").mkdir()
    expect_error("has no .txt", prepare, tmp_path, tmp_path / "empty_dir")
    (tmp_path / "model.txt").write_bytes(b"weights\x00\x01\x02" * 10)
    assert "model.txt" in expect_error("binary", prepare, tmp_path, tmp_path / "model.txt")
    (tmp_path / "rows.jsonl").write_bytes(b'{"text": "a"}\n\x00\x00\x00')
    expect_error("binary", prepare, tmp_path, tmp_path / "rows.jsonl")


def test_non_utf8_file_is_named(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text(words(1))
    (folder / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e".encode("latin-1"))
    message = expect_error("not UTF-8", prepare, tmp_path, folder)
    assert "latin1.txt" in message and "offset 3" in message


def test_bad_columns_list_the_columns(tmp_path):
    path = write_table(tmp_path / "table.csv", ROWS)
    message = expect_error("no column 'content'", prepare, tmp_path, path, text_column="content")
    assert "['id', 'title', 'body']" in message
    expect_error("holds int values", load_texts, DataConfig(source=str(write_jsonl(tmp_path / "n.jsonl", ROWS)),
                                                            text_column="id"))
    expect_error("no text column", load_texts, DataConfig(source=str(write_jsonl(tmp_path / "x.jsonl",
                                                                                 [{"a": 1}, {"a": 2}]))))
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    expect_error("could not read", load_texts, DataConfig(source=str(tmp_path / "broken.jsonl")))


def test_corpus_shorter_than_a_window_says_how_short(tmp_path):
    (tmp_path / "short.txt").write_text(words(1, 20))
    message = expect_error("tokens but one window needs 257", prepare, tmp_path, tmp_path / "short.txt",
                           context=256)
    assert "model.context_length=" in message and "more data" in message


def test_hub_name_offline_fails_at_once_naming_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    opened = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: opened.append(a) or pytest.fail("reached the Hub"))
    message = expect_error("builtin", prepare, tmp_path, "roneneldan/TinyStories")  # and no connection attempted
    assert ("HF_DATASETS_OFFLINE is set" in message or "HF_HUB_OFFLINE is set" in message) and opened == []


def test_mixed_and_too_small_instruction_data(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text(words(1))
    write_jsonl(folder / "sft.jsonl", ALPACA)
    expect_error("mixes plain text with instruction records", prepare, tmp_path, folder)
    expect_error("at least 2 records", prepare, tmp_path, write_jsonl(tmp_path / "one.jsonl", ALPACA[:1]))


# ---- the token cache ------------------------------------------------------------------------------

def test_second_prepare_reuses_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(words(i) for i in range(200)))
    first = prepare(tmp_path, path)
    files = sorted(first.cache_dir.iterdir())
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    work = []  # what a first prepare does: train the vocabulary, tokenize into the cache
    for name in ("build_tokenizer", "_build_cache"):
        real = getattr(cache_module, name)
        monkeypatch.setattr(cache_module, name, lambda *a, _name=name, _real=real, **kw: work.append(_name)
                            or _real(*a, **kw))
    second = prepare(tmp_path, path)
    assert work == []  # neither redone
    assert second.fingerprint == first.fingerprint and second.cache_dir == first.cache_dir
    assert {f.name: f.stat().st_mtime_ns for f in sorted(second.cache_dir.iterdir())} == stamps
    assert np.array_equal(second.tokens("train"), first.tokens("train"))
    # Other settings or other content: another cache.
    assert prepare(tmp_path, path, val_fraction=0.1).fingerprint != first.fingerprint
    path.write_text(path.read_text() + " more")
    assert prepare(tmp_path, path).fingerprint != first.fingerprint


def test_run_config_with_the_template_filled_in_finds_the_same_tokens(tmp_path):
    # A run saves data.template resolved ('alpaca'); resuming or evaluating it must not tokenize again.
    path = write_jsonl(tmp_path / "sft.jsonl", ALPACA)
    auto = prepare(tmp_path, path)
    stamp = (auto.cache_dir / "train.bin").stat().st_mtime_ns
    explicit = prepare(tmp_path, path, template="alpaca")
    assert explicit.cache_dir == auto.cache_dir and explicit.fingerprint == auto.fingerprint
    assert (explicit.cache_dir / "train.bin").stat().st_mtime_ns == stamp
    assert prepare(tmp_path, path).fingerprint == auto.fingerprint
    assert prepare(tmp_path, path, template="chatml").fingerprint != auto.fingerprint


def test_half_written_cache_is_never_reused(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(words(i) for i in range(50)))
    good = prepare(tmp_path, path)
    n_train = good.train_tokens
    with open(good.cache_dir / "train.bin", "r+b") as f:  # a tokenization killed midway
        f.truncate(100)
    again = prepare(tmp_path, path)
    assert again.train_tokens == n_train and len(again.tokens("train")) == n_train
    (again.cache_dir / "meta.json").unlink()  # killed before meta.json was written
    assert prepare(tmp_path, path).train_tokens == n_train
    assert not [p for p in again.cache_dir.iterdir() if ".tmp" in p.name]


def test_trained_tokenizer_is_cached_and_reused(tmp_path):
    config = run_config("builtin", kind="bpe", vocab=300, max_chars=30_000)
    first = prepare_data(config, cache_dir=tmp_path, progress=False)
    saved = list((tmp_path / "tokenizers").iterdir())
    assert len(saved) == 1 and first.tokenizer.n_vocab <= 300
    stamp = saved[0].stat().st_mtime_ns
    second = prepare_data(config, cache_dir=tmp_path, progress=False)
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert second.fingerprint == first.fingerprint and saved[0].stat().st_mtime_ns == stamp
    assert list((tmp_path / "tokenizers").iterdir()) == saved


def test_tokens_are_uint16_for_small_vocabularies(tmp_path):
    (tmp_path / "book.txt").write_text(words(1, 300))
    data = prepare(tmp_path, tmp_path / "book.txt")
    assert data.tokens("train").dtype == np.uint16
    assert os.path.getsize(data.cache_dir / "train.bin") == 2 * data.train_tokens
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32 and token_dtype(100277) == np.uint32


def test_given_tokenizer_is_used_as_is(tmp_path):
    (tmp_path / "book.txt").write_text(words(1, 300))
    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), [string.ascii_lowercase + " "], progress=False)
    data = prepare(tmp_path, tmp_path / "book.txt", tokenizer=tokenizer)
    assert data.tokenizer is tokenizer and not (tmp_path / "cache" / "tokenizers").exists()


# ---- sampling -------------------------------------------------------------------------------------

@pytest.fixture
def letters(tmp_path):
    """Random letters: every 12-token window occurs once, so a window tells where it came from."""
    rng = random.Random(0)
    (tmp_path / "letters.txt").write_text("".join(rng.choices(string.ascii_lowercase, k=8000)))
    data = prepare(tmp_path, tmp_path / "letters.txt")
    tokens = np.asarray(data.tokens("train")).tolist()
    where = {tuple(tokens[i:i + 12]): i for i in range(len(tokens) - 11)}
    return data, where


def test_batches_are_real_windows_shifted_by_one(letters):
    data, where = letters
    x, y = data.get_batch("train", 8, 12, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 12) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    tokens = data.tokens("train")
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        start = where[tuple(row_x)]
        assert row_y == tokens[start + 1:start + 13].tolist()
    again, _ = data.get_batch("train", 8, 12, torch.Generator().manual_seed(1))
    assert torch.equal(again, x)  # the same generator state gives the same batch


def test_each_rank_samples_its_own_slice(letters):
    data, where = letters
    n, generator = data.train_tokens, torch.Generator().manual_seed(2)
    for rank in range(2):
        lo, hi = n * rank // 2, n * (rank + 1) // 2
        for _ in range(20):
            x, _ = data.get_batch("train", 8, 12, generator, rank=rank, world_size=2)
            starts = [where[tuple(row)] for row in x.tolist()]
            assert all(lo <= s and s + 13 <= hi for s in starts)
    expect_error("rank 3's slice", data.get_batch, "train", 2, 12, generator, rank=3, world_size=2000)


@pytest.mark.parametrize("stride", [1, 5, 16, 100])
def test_eval_windows_score_every_token_exactly_once(letters, stride):
    data, _ = letters
    tokens, context = np.asarray(data.tokens("val")), 16
    seen = np.zeros(len(tokens), dtype=int)
    begin = 0
    for x, y in data.iter_eval_windows("val", context, stride):
        assert x.shape == y.shape and x.shape[0] == 1 and 1 <= x.shape[1] <= context
        assert x[0].tolist() == tokens[begin:begin + x.shape[1]].tolist()
        for i in torch.nonzero(y[0] != -100).flatten().tolist():
            seen[begin + 1 + i] += 1
            assert y[0, i] == tokens[begin + 1 + i]
        begin += min(stride, context)
    assert seen[0] == 0 and (seen[1:] == 1).all()


def test_preview_summary_and_tokenizing_leave_torch_unloaded(tmp_path):
    # The Studio previews and tokenizes in its own process, which must stay free of torch.
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": words(i)} for i in range(20)])
    code = (f"import sys; from slm_core.config import DataConfig, RunConfig, TokenizerConfig; "
            f"from slm_core.data.cache import prepare_data, preview, data_summary; cfg = DataConfig(source={str(path)!r}); "
            f"preview(cfg); data_summary(cfg); prepare_data(RunConfig(data=cfg, tokenizer=TokenizerConfig(kind='char')), "
            f"cache_dir={str(tmp_path / 'c')!r}, progress=False, require_windows=False); "
            f"assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-2000:]


# ---- previews --------------------------------------------------------------------------------------

def test_preview_reads_only_the_start(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": words(i, 200)} for i in range(300)])
    with open(path, "a") as f:
        f.write("{broken json\n")  # only a full read reaches this line
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **kw: parsed.append(text) or real_loads(text, *a, **kw))
    monkeypatch.setattr(sources_module, "load_tabular", lambda *a, **kw: pytest.fail("read the whole file"))
    shown = preview(DataConfig(source=str(path)), n=3)
    monkeypatch.undo()
    assert len(parsed) == 3  # the first three rows, and not one more
    assert len(shown) == 3 and shown[0].startswith(words(0, 200)[:50]) and shown[0].endswith("…")
    expect_error("could not read", load_texts, DataConfig(source=str(path)))
    (tmp_path / "play.txt").write_text("ACT I\n\nScene one.\n\nEnter a ghost.\n\nExit.")
    assert preview(DataConfig(source=str(tmp_path / "play.txt")), n=3) == ["ACT I", "Scene one.", "Enter a ghost."]
    sft = preview(DataConfig(source="builtin:instructions"), n=2)
    assert len(sft) == 2 and "### Response:" in sft[0]

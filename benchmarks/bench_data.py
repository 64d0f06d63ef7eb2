"""Corpus preparation at scale: `slm_core.data.cache.prepare_data` side by side with nanoGPT's approach.

    python benchmarks/bench_data.py --mb 200            # generated stories, every case
    python benchmarks/bench_data.py --mb 50 --cases ours-char,nanogpt-char

The corpus is built-in stories (TinyStories-like), written once as `stories.txt` (documents
separated by `<|endoftext|>` lines, what we read) and `stories.jsonl` (the same documents as
{"text": ...} rows, what nanoGPT's openwebtext/prepare.py reads through `datasets`). Each case runs
in a fresh process with fresh caches; peak RSS is that process's VmHWM plus its largest child's
(a worker of a process pool or of datasets.map). Cases:

- ours-gpt2 / nanogpt-gpt2: GPT-2 BPE (tiktoken; the offline files of ../shared/data/gpt2).
  nanoGPT: load_dataset + train_test_split + datasets.map(num_proc) + np.memmap in 1024 batches,
  as data/openwebtext/prepare.py does.
- ours-bpe: our byte-level BPE of 4,096 tokens, trained on the stream's first tokenizer.train_chars
  characters (the training time is included), then tokenized. nanoGPT has no trained BPE.
- ours-char / nanogpt-char: characters; nanoGPT's data/shakespeare_char/prepare.py reads the file
  whole, encodes a Python list and writes it with numpy.

--timings: the small in-process figures the tests leave to here: the built-in stories (6M characters)
generated, and a 4,096-token BPE trained on 5M characters of them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPT2_FILES = ROOT.parent / "shared" / "data" / "gpt2"
CASES = ["ours-gpt2", "nanogpt-gpt2", "ours-bpe", "ours-char", "nanogpt-char"]


def write_corpus(folder: Path, mb: int) -> tuple[Path, Path]:
    from slm_core.data.corpus import iter_stories

    txt, jsonl = folder / f"stories-{mb}mb.txt", folder / f"stories-{mb}mb.jsonl"
    if txt.exists() and jsonl.exists():
        return txt, jsonl
    with open(txt, "w", encoding="utf-8") as t, open(jsonl, "w", encoding="utf-8") as j:
        for story in iter_stories(seed=11):
            t.write(story + "\n<|endoftext|>\n")
            j.write(json.dumps({"text": story}) + "\n")
            if t.tell() >= mb << 20:
                break
    return txt, jsonl


def peak_mb() -> tuple[float, float]:
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return hwm / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# ---- the cases (each in its own process) ----------------------------------------------------------

def ours(kind: str, corpus: Path, work: Path, workers: int) -> int:
    from slm_core.config import DataConfig, RunConfig, TokenizerConfig
    from slm_core.data.cache import prepare_data

    tok = TokenizerConfig(kind=kind, vocab_size=4096, path=str(GPT2_FILES) if kind == "gpt2" else None)
    data = prepare_data(RunConfig(tokenizer=tok, data=DataConfig(source=str(corpus))), cache_dir=work,
                        progress=False, require_windows=False, workers=workers)
    return data.train_tokens + data.val_tokens


def nanogpt_gpt2(corpus: Path, work: Path, workers: int) -> int:
    """data/openwebtext/prepare.py, with load_dataset("openwebtext") replaced by the local JSONL."""
    import numpy as np
    import tiktoken
    from datasets import load_dataset

    enc = tiktoken.get_encoding("gpt2")
    dataset = load_dataset("json", data_files=str(corpus), num_proc=workers, cache_dir=str(work / "hf"))
    split_dataset = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split_dataset["val"] = split_dataset.pop("test")

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = split_dataset.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=workers)
    total = 0
    for split, dset in tokenized.items():
        arr_len = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(work / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        idx = 0
        total_batches = min(1024, len(dset))  # datasets 5 refuses more shards than rows (a small val split)
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx: idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()
        total += int(arr_len)
    return total


def nanogpt_char(corpus: Path, work: Path, workers: int) -> int:
    """data/shakespeare_char/prepare.py on the text file."""
    import numpy as np

    with open(corpus, "r") as f:
        data = f.read()
    chars = sorted(list(set(data)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    train_ids.tofile(work / "train.bin")
    val_ids.tofile(work / "val.bin")
    return len(train_ids) + len(val_ids)


def run_case(case: str, txt: Path, jsonl: Path, work: Path, workers: int) -> dict:
    if case == "nanogpt-gpt2":
        cache = work / "tiktoken"  # data/README.md's offline recipe for tiktoken's download cache
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(GPT2_FILES / "vocab.bpe", cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
        shutil.copy(GPT2_FILES / "encoder.json", cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    started = time.perf_counter()
    if case.startswith("ours-"):
        tokens = ours(case[5:], txt, work, workers)
    else:
        tokens = {"nanogpt-gpt2": nanogpt_gpt2, "nanogpt-char": nanogpt_char}[case](
            jsonl if case == "nanogpt-gpt2" else txt, work, workers)
    seconds = time.perf_counter() - started
    main_mb, child_mb = peak_mb()
    return {"case": case, "seconds": seconds, "tokens": tokens, "main_mb": main_mb, "child_mb": child_mb}


# ---- the table ------------------------------------------------------------------------------------

def timings() -> None:
    """Seconds for the built-in corpus and a BPE on 5 MB of it, in this process (best of two)."""
    from slm_core.config import TokenizerConfig
    from slm_core.data.corpus import builtin_stories
    from slm_core.models.tokenizer import build_tokenizer

    def best(fn, runs=2) -> tuple[float, object]:
        seconds, result = [], None
        for _ in range(runs):
            started = time.perf_counter()
            result = fn()
            seconds.append(time.perf_counter() - started)
        return min(seconds), result

    seconds, stories = best(builtin_stories)
    print(f"builtin_stories(): {sum(map(len, stories)) / 1e6:.1f}M characters in {seconds:.2f} s", flush=True)
    texts = builtin_stories(5_000_000)
    seconds, tok = best(lambda: build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=4096), texts, progress=False))
    print(f"BPE 4096 on 5M characters: {tok.n_vocab} tokens in {seconds:.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the generated corpus in MB (issue: 1024)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--dir", default="/tmp/slm-bench-data", help="where the corpus and outputs go")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timings", action="store_true", help="corpus generation and BPE training times instead")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.timings:
        timings()
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    workers = args.workers or len(os.sched_getaffinity(0))
    txt, jsonl = write_corpus(folder, args.mb)
    if args.case:
        work = folder / f"work-{args.case}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        print(json.dumps(run_case(args.case, txt, jsonl, work, workers)))
        shutil.rmtree(work, ignore_errors=True)
        return
    size_mb = txt.stat().st_size / 2 ** 20
    print(f"corpus: {size_mb:.0f} MB of generated stories ({txt}), {workers} workers, {os.cpu_count()} cores")
    results = {}
    for case in args.cases.split(","):
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        out = subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--dir", str(folder), "--workers",
                              str(workers), "--case", case], capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode:
            print(f"{case}: failed\n{out.stderr[-1500:]}")
            continue
        r = results[case] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:<14} {r['seconds']:8.1f} s {size_mb / r['seconds']:8.2f} MB/s {r['tokens'] / r['seconds'] / 1e6:7.2f}M tok/s"
              f"   peak RSS main {r['main_mb']:7.0f} MB + largest worker {r['child_mb']:6.0f} MB", flush=True)
    for ours_case, peer in (("ours-gpt2", "nanogpt-gpt2"), ("ours-char", "nanogpt-char"), ("ours-bpe", "nanogpt-gpt2")):
        if ours_case in results and peer in results:
            a, b = results[ours_case], results[peer]
            print(f"{ours_case} vs {peer}: throughput {b['seconds'] / a['seconds']:.2f}x, "
                  f"peak RSS (main + worker) {(a['main_mb'] + a['child_mb']) / (b['main_mb'] + b['child_mb']):.2f}x")


if __name__ == "__main__":
    main()

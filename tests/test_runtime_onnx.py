"""onnxruntime-genai: `export --format onnx` builds a folder genai runs as is, and chatting from it gives the
native engine's greedy text, with the same stop strings and clean streamed text; the serve API works on it."""

import pytest
import torch

from slm_core.config import ModelConfig, TokenizerConfig
from slm_core.errors import SLMError
from slm_core.infer.engine import Engine
from slm_core.infer.sampling import SamplingParams
from slm_core.models.model import Transformer
from slm_core.post.export import export_model

TEXT = ("Once upon a time there was a little dog. The dog liked to run and play in the sun. "
        "One day the little dog met a big cat, and they became friends. ") * 40


@pytest.fixture(scope="module")
def genai(tmp_path_factory):
    """(OnnxEngine, native Engine) on the same random-init Llama-shaped model."""
    pytest.importorskip("onnxruntime_genai")
    from slm_core.infer.onnx import OnnxEngine
    from slm_core.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), [TEXT], progress=False)
    torch.manual_seed(0)
    config = ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, context_length=64,
                         vocab_size=tokenizer.n_vocab)
    model = Transformer(config).eval()
    out = tmp_path_factory.mktemp("genai") / "onnx"
    files = export_model(model, tokenizer, config, out, fmt="onnx")
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "export.json"} <= {p.name for p in files}
    native = Engine(model, tokenizer, slots=2, dtype="fp32")
    yield OnnxEngine(out, threads=1), native
    native.close()


@pytest.mark.slow  # the builder runs in a subprocess (~30 s on 2 loaded cores)
def test_genai_greedy_text_equals_the_native_engine(genai):
    runtime, native = genai
    assert runtime.description.startswith("onnxruntime-genai")
    for prompt in ("Once upon a time", "The little dog", "a big cat"):
        ids = runtime.tokenizer.encode(prompt)
        assert ids == native.tokenizer.encode(prompt)
        for params in (SamplingParams(24, temperature=0), SamplingParams(24, temperature=0, repetition_penalty=1.4)):
            stats: dict = {}
            assert "".join(runtime.stream(ids, params, stats)) == "".join(native.stream(ids, params))
            assert stats["tokens"] >= 1 and stats["ttft_s"] is not None


@pytest.mark.slow
def test_genai_sampling_is_seeded_and_stop_strings_cut(genai):
    runtime, _ = genai
    ids = runtime.tokenizer.encode("Once upon a time")
    sampled = SamplingParams(30, temperature=0.9, top_k=20, top_p=0.9, seed=4)
    assert "".join(runtime.stream(ids, sampled)) == "".join(runtime.stream(ids, sampled))
    full = "".join(runtime.stream(ids, SamplingParams(30, temperature=0)))
    stop = full[3:5]
    stats: dict = {}
    cut = "".join(runtime.stream(ids, SamplingParams(30, temperature=0, stop=(stop,)), stats))
    assert cut == full[:full.index(stop)] and stats["finish_reason"] == "stop"


@pytest.mark.slow
def test_a_paced_stream_of_a_lone_generator_gathers_its_tokens_between_updates(genai):
    from slm_core.infer.onnx import GenaiRequest

    runtime, _ = genai
    ids, greedy = runtime.tokenizer.encode("Once upon a time"), SamplingParams(40, temperature=0)
    probe = runtime.submit(ids, greedy)
    assert isinstance(probe, GenaiRequest)  # decoded as it is read, not ahead
    probe.cancel()
    every = list(runtime.stream(ids, greedy))
    paced = list(runtime.stream(ids, greedy, interval_s=0.5))  # far longer than decoding all 40 tokens takes
    assert "".join(paced) == "".join(every) and len(every) > 10
    assert len(paced) <= 2  # the first token's text at once, then the rest in one update


@pytest.mark.slow
def test_requests_overlapping_one_in_flight_are_decoded_in_one_batch_each_with_its_own_answer(genai, monkeypatch):
    import threading

    from slm_core.infer import genai_batch
    from slm_core.infer.genai_batch import BatchedRequest
    from slm_core.infer.onnx import GenaiRequest

    runtime, native = genai
    if runtime.batcher is None:
        pytest.skip("this onnxruntime-genai has no og.Engine to batch with")
    # Threads released together reach submit() up to tens of ms apart on a loaded 2-core machine (CI): a gather
    # window that wide keeps "arrived together" true there (the product's 10 ms suits clients on one server).
    monkeypatch.setattr(genai_batch, "GATHER_S", 1.0)
    prompts = [runtime.tokenizer.encode(p) for p in ("Once upon a time", "The little dog", "a big cat", "One day")]
    greedy = SamplingParams(16, temperature=0)
    alone = ["".join(native.stream(ids, greedy)) for ids in prompts]  # native greedy = genai greedy (above)
    first = runtime.submit(prompts[0], greedy)
    assert isinstance(first, GenaiRequest)  # alone: its own Generator, in this thread
    together, start = [None] * len(prompts), threading.Barrier(len(prompts) - 1)
    routed = [None] * len(prompts)

    def client(i):
        start.wait()  # arrive together while the first is in flight, as several clients at once do
        request = routed[i] = runtime.submit(prompts[i], greedy)
        together[i] = runtime.tokenizer.decode_bytes(list(request)).decode()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(1, len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    together[0] = runtime.tokenizer.decode_bytes(list(first)).decode()
    assert together == alone and len(set(alone)) > 1
    assert all(isinstance(r, BatchedRequest) for r in routed[1:])
    assert runtime.batcher.peak >= 2  # genai's engine stepped several requests at once
    assert runtime.alone == 0
    again = runtime.submit(prompts[1], greedy)
    assert isinstance(again, GenaiRequest)  # alone again
    again.cancel()
    assert runtime.alone == 0
    # `slm serve`'s engine takes a lone request into its loop too (its clients overlap), with `slots` as genai's
    # batch size; a batch that gathers one request decodes on a Generator there (faster than genai's engine alone)
    from slm_core.infer.onnx import OnnxEngine

    served = OnnxEngine(runtime.folder, threads=1, slots=8, inline_alone=False)
    lone = served.submit(prompts[2], greedy)
    assert isinstance(lone, BatchedRequest)
    assert runtime.tokenizer.decode_bytes(list(lone)).decode() == alone[2]
    assert served.batcher.capacity == 8 and served.batcher.peak == 0 and lone.finish_reason == "length"
    long = served.submit(prompts[3], SamplingParams(served.context_length - len(prompts[3]), temperature=0))
    long.cancel()  # its reader left at once (while the batch gathered, or a few tokens in)
    assert len(list(long)) < long.params.max_new_tokens and long.finish_reason == "cancelled"
    served.close()
    # a seeded sampled request cannot join genai's static batch: it runs on its own Generator, reproducibly
    seeded = SamplingParams(12, temperature=0.9, seed=4)
    assert not runtime.batcher.can_join(seeded)
    assert "".join(runtime.stream(prompts[0], seeded)) == "".join(runtime.stream(prompts[0], seeded))


@pytest.mark.slow
def test_serve_api_on_the_genai_engine(genai):
    from fastapi.testclient import TestClient

    from slm_core.infer.serve import Served, chat_encoder, create_app

    runtime, native = genai
    app = TestClient(create_app(Served(runtime, "tiny-onnx", chat_encoder(None, runtime.tokenizer))))
    body = {"model": "tiny-onnx", "prompt": "The little dog", "max_tokens": 12, "temperature": 0}
    answer = app.post("/v1/completions", json=body).json()
    expected = "".join(native.stream(native.tokenizer.encode("The little dog"), SamplingParams(12, temperature=0)))
    assert answer["choices"][0]["text"] == expected
    assert app.post("/v1/completions", json={**body, "max_tokens": -3}).status_code == 400


def test_without_the_package_or_for_gpt2_the_message_says_what_to_do(monkeypatch, tmp_path):
    from slm_core.infer import onnx as runtime_onnx

    monkeypatch.setattr(runtime_onnx, "available", lambda: False)
    with pytest.raises(SLMError, match="pip install onnxruntime-genai"):
        runtime_onnx.OnnxEngine(tmp_path)
    monkeypatch.undo()
    if not runtime_onnx.available():
        pytest.skip("onnxruntime-genai not installed")
    model = Transformer(ModelConfig(family="gpt2", n_layer=1, n_head=2, d_model=16, context_length=16,
                                    vocab_size=32))
    with pytest.raises(SLMError, match="onnx-graph"):
        runtime_onnx.build_genai_folder(model, object(), tmp_path / "out")
    with pytest.raises(SLMError, match="not an onnxruntime-genai folder"):
        runtime_onnx.OnnxEngine(tmp_path)

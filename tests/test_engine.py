"""The native engine: batched decode at per-row positions equals one sequence at a time, concurrent
requests get their own correct tokens, and the text layer is clean (held multi-byte characters, no
control characters or U+FFFD, stop strings cut across token boundaries)."""

import threading

import pytest
import torch

import slm_core.infer.decoder as decoder_module
import slm_core.infer.engine as engine_module
import slm_core.models.decoding as decoding
from slm_core.config import ModelConfig
from slm_core.infer.engine import Decoder, Engine, decode_one
from slm_core.infer.sampling import SamplingParams, TextStream, clean
from slm_core.models.model import Transformer


def tiny(family: str, context: int = 48) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=32, context_length=context, vocab_size=64)
    return Transformer(config).eval()


class ByteTokenizer:
    """Ids 0..62 are printable ASCII characters, 63 ends the text: enough to drive the engine's text layer."""
    eot_id = 63

    def decode_bytes(self, ids):
        return bytes(32 + i for i in ids)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_batched_step_at_different_positions_equals_each_sequence_alone(family):
    model = tiny(family)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    alone = []
    for prompt in prompts:
        decoder = Decoder(model, slots=1)
        decoder.prefill(0, prompt)
        alone.append(decoder.step([0], [7], [len(prompt)]))
    decoder = Decoder(model, slots=4)
    for slot, prompt in zip((3, 0, 1), prompts):  # non-consecutive slots exercise the gather path too
        decoder.prefill(slot, prompt)
    batched = decoder.step([3, 0, 1], [7, 7, 7], [len(p) for p in prompts])
    for row, single in enumerate(alone):
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=1e-5)
    # and the decoder's prefill equals the model's own full forward pass
    full = model(torch.tensor([prompts[1]]))[0, -1]
    torch.testing.assert_close(Decoder(model, 1).prefill(0, prompts[1]), full, atol=1e-5, rtol=1e-5)


def test_concurrent_requests_each_get_the_tokens_they_would_get_alone():
    model = tiny("llama")
    engine = Engine(model, ByteTokenizer(), slots=3, dtype="fp32")
    prompts = [[1, 2, 3], [9, 8], [5, 6, 7, 8, 9], [30, 31], [40]]  # five requests, three slots: some wait
    params = [SamplingParams(20, temperature=0), SamplingParams(20, temperature=0.9, seed=5),
              SamplingParams(20, temperature=0), SamplingParams(20, temperature=1.0, top_k=5, top_p=0.8, seed=2),
              SamplingParams(20, temperature=0.7, repetition_penalty=1.3, seed=9)]
    expected = [list(decode_one(Decoder(model, 1), p, sp, stop_ids=(63,))) for p, sp in zip(prompts, params)]
    results = [None] * len(prompts)

    def client(i):
        results[i] = list(engine.submit(prompts[i], params[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.close()
    assert results == expected
    assert all(len(r) >= 1 for r in results)


def test_engine_slides_past_the_cache_and_honours_the_token_budget():
    model = tiny("llama", context=16)
    engine = Engine(model, ByteTokenizer(), slots=2, dtype="fp32")
    request = engine.submit([1, 2, 3], SamplingParams(40, temperature=0.8, seed=1), stop_ids=())
    assert len(list(request)) == 40 and request.finish_reason == "length"
    assert list(engine.submit([1], SamplingParams(0))) == []
    engine.close()


def test_text_stream_holds_partial_characters_and_drops_garbage():
    stream = TextStream()
    data = "héllo 🙂".encode()
    pieces = [stream.feed(data[i:i + 1]) for i in range(len(data))] + [stream.finish()]
    assert "".join(pieces) == "héllo 🙂" and all("\ufffd" not in p for p in pieces)
    assert pieces[1] == "" and pieces[2] == "é"  # the first byte of é waits for the second
    stream = TextStream()
    out = stream.feed(b"a\x1b[31mb\x00c\xff\xfed\n\te") + stream.finish()
    assert out == "a[31mbcd\n\te"
    assert clean("x\u0007y\ufffdz") == "xyz"


def test_stop_strings_end_the_text_even_when_split_across_tokens():
    stream = TextStream(stop=("###", "END"))
    shown = [stream.feed(t.encode()) for t in ("Hello #", "#", " no", " E", "N", "D more")]
    assert "".join(shown) + stream.finish() == "Hello ## no " and stream.stopped
    stream = TextStream(stop=("###",))
    assert stream.feed(b"a#") == "a" and stream.finish() == "#"  # held text comes out at the end


def test_engine_stream_stops_at_a_stop_string_and_reports_speed():
    model = tiny("gpt2")
    engine = Engine(model, ByteTokenizer(), slots=2, dtype="fp32")
    params = SamplingParams(30, temperature=0)
    stats: dict = {}
    full = "".join(engine.stream([1, 2, 3], params, stats, stop_ids=()))
    assert stats["tokens"] == 30 and stats["ttft_s"] is not None and stats["finish_reason"] == "length"
    stop = full[2:4]
    cut = "".join(engine.stream([1, 2, 3], SamplingParams(30, temperature=0, stop=(stop,)), stats, stop_ids=()))
    assert cut == full[:full.index(stop)] and stats["finish_reason"] == "stop" and stats["tokens"] < 30
    engine.close()


def test_closing_the_engine_ends_running_and_waiting_requests():
    engine = Engine(tiny("llama", context=16), ByteTokenizer(), slots=1, dtype="fp32")
    requests = [engine.submit([1, 2], SamplingParams(10_000, temperature=0), stop_ids=()) for _ in range(3)]
    next(iter(requests[0]))  # the first is decoding, the others wait for its slot
    engine.close()
    for request in requests:
        list(request)  # ends instead of waiting forever
        assert request.finish_reason == "cancelled"
    with pytest.raises(Exception, match="closed"):
        engine.submit([1], SamplingParams(4))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_static_shape_step_that_torch_compile_gets_equals_the_dynamic_step(family):
    # compile=True wraps exactly this function; compiling costs minutes on CPU, so its graph is checked eagerly.
    model = tiny(family)
    dynamic, static = Decoder(model, slots=3), Decoder(model, slots=3)
    for decoder in (dynamic, static):
        decoder.prefill(0, [1, 2, 3, 4])
        decoder.prefill(2, [5, 6])
    expected = dynamic.step([0, 2], [9, 9], [4, 2])
    with torch.inference_mode():
        logits = static._static_step(torch.tensor([9, 0, 9]), torch.tensor([4, 0, 2]))
    torch.testing.assert_close(logits[[0, 2]].float(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [dict(family="gpt2"), dict(family="llama"),
                                   dict(family="llama", qkv_bias=True, qk_norm=True, tie_embeddings=False)])
def test_cached_greedy_decoding_equals_the_models_own_full_forward(shape):
    # The decoder permutes q/k head dims for its one-multiply RoPE and folds the residual into its matrix
    # multiplies: every token of a greedy reply must still be the argmax of the model's own uncached forward.
    torch.manual_seed(1)
    config = ModelConfig(n_layer=2, n_head=4, n_kv_head=2 if shape["family"] == "llama" else None, d_model=32,
                         context_length=64, vocab_size=64, **shape)
    model = Transformer(config).eval()
    for p in model.parameters():  # non-zero biases and norm weights, so a mis-permuted one would show
        torch.nn.init.normal_(p, std=0.3)
    prompt = [3, 1, 4, 1, 5]
    got = list(decode_one(Decoder(model, 1), prompt, SamplingParams(24, temperature=0)))
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert got == tokens[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prepacked_cpu_matrices_give_the_models_own_logits_alone_and_batched(family):
    # From 512 wide, fp32 CPU projections run from oneDNN-prepacked weights (GPT-2's biases ride in the same
    # call), and one row on one thread from a second, transposed copy: every path must be the model's math.
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: the decoder keeps MKL's path only")
    torch.manual_seed(2)
    config = ModelConfig(family=family, n_layer=1, n_head=8, n_kv_head=2 if family == "llama" else None,
                         d_model=512, d_ff=512, context_length=32, vocab_size=512)
    model = Transformer(config).eval()
    for p in model.parameters():  # non-zero biases and norm weights, so a dropped or misplaced one would show
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.3)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    decoder = Decoder(model, slots=3)
    assert decoder.layers[0].qkv.packed is not None and decoder.head.packed is not None
    full = [model(torch.tensor([p + [11]]))[0, -1] for p in prompts]
    for slot, prompt in enumerate(prompts):
        torch.testing.assert_close(decoder.prefill(slot, prompt), model(torch.tensor([prompt]))[0, -1],
                                   atol=1e-4, rtol=1e-4)
    batched = decoder.step([0, 1, 2], [11, 11, 11], [len(p) for p in prompts])
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):  # one thread: the transposed copy; two: the prepacked weights
            torch.set_num_threads(count)
            alone = Decoder(model, slots=1)
            alone.prefill(0, prompts[0])
            torch.testing.assert_close(alone.step([0], [11], [len(prompts[0])])[0], full[0], atol=1e-4, rtol=1e-4)
    finally:
        torch.set_num_threads(threads)
    for row, expected in zip(batched, full):
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)


def _model_with_visible_norms(family: str) -> Transformer:
    torch.manual_seed(3)
    config = ModelConfig(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=64, context_length=32, vocab_size=128)
    model = Transformer(config).eval()
    for p in model.parameters():
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.3)
    return model


# How close a step read from each half-precision copy stays to fp32 logits, relative to their largest: fp16 keeps
# 11 mantissa bits, bf16 8.
HALF_TOLERANCE = {"fp16": 0.005, "bf16": 0.03}


def _half_kind(kind: str, monkeypatch) -> None:
    """Make Decoders build the `kind` copy: fp16 where this torch has FBGEMM's kernel (x86 builds), else bf16,
    as on a build without it (ARM)."""

    if kind == "bf16":
        monkeypatch.setattr(decoder_module, "_fp16_packed", lambda w, bias: None)
    elif decoder_module.half_copy_kind() != "fp16":
        pytest.skip("this torch build has no FBGEMM fp16 kernel (not x86): Decoders use the bf16 copy")


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_row_steps_from_a_half_copy_stay_close_and_everything_else_stays_exact_fp32(family, kind, monkeypatch):
    # A memory-bound fp32 model decodes its one-row multiplies from a half-precision copy (half the bytes a
    # token): a one-row step and the last-position head. A prompt's layers (the cache they write) and batched
    # steps keep the exact fp32 weights, and dtype 'fp32' turns the copy off.

    _half_kind(kind, monkeypatch)
    model = _model_with_visible_norms(family)
    prompts = [[1, 2, 3, 4], [5, 6]]
    full = [model(torch.tensor([p + [7]]))[0, -1] for p in prompts]
    decoder = Decoder(model, slots=2, one_row_half=True)
    assert decoder.one_row_half and decoder.half_kind == kind
    for slot, prompt in enumerate(prompts):
        expected = model(torch.tensor([prompt]))[0, -1]
        torch.testing.assert_close(decoder.prefill(slot, prompt), expected, atol=0.03 * expected.abs().max().item(),
                                   rtol=0)
    for row, expected in zip(decoder.step([0, 1], [7, 7], [4, 2]), full):  # several rows, exact cache: fp32
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)
    decoder.prefill(0, prompts[0])
    one = decoder.step([0], [7], [4])[0]
    assert one.dtype == torch.float32
    scale = full[0].abs().max().item()
    torch.testing.assert_close(one, full[0], atol=HALF_TOLERANCE[kind] * scale, rtol=0)
    assert not torch.equal(one, full[0])  # and it really ran the copy

    assert decoding.one_row_half_default(decoding.ONE_ROW_HALF_MIN_PARAMS, torch.float32, "cpu")
    assert not decoding.one_row_half_default(decoding.ONE_ROW_HALF_MIN_PARAMS - 1, torch.float32, "cpu")
    assert not decoding.one_row_half_default(decoding.ONE_ROW_HALF_MIN_PARAMS, torch.bfloat16, "cpu")
    assert decoding.prepared_weight_copies(100_000_000, 768, "fp32", "cpu") == 1.5  # fused + half copies
    monkeypatch.setattr(decoding, "ONE_ROW_HALF_MIN_PARAMS", 0)  # as if this model were 40M+
    monkeypatch.setattr(engine_module, "cpu_has_native_bf16", lambda: False)  # auto keeps fp32 weights, as on AVX2
    auto, exact = Engine(model, ByteTokenizer(), slots=1), Engine(model, ByteTokenizer(), slots=1, dtype="fp32")
    assert auto.decoder.one_row_half and f"{kind} one-row copy" in auto.description
    assert not exact.decoder.one_row_half and "one-row copy" not in exact.description
    reference = list(decode_one(Decoder(model, 1, one_row_half=False), prompts[0], SamplingParams(8, temperature=0)))
    assert list(exact.submit(prompts[0], SamplingParams(8, temperature=0), stop_ids=())) == reference
    auto.close()
    exact.close()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_big_model_decodes_from_its_bf16_copy_alike_alone_or_batched(family, monkeypatch):
    # Past FAST_MAX_PARAMS (a 1B model) a bf16 copy is the only one (FBGEMM's fp16 packing would take a minute).
    # Its multiplies of up to BIG_HALF_MAX_ROWS rows read it (fp32 ones of 2-4 rows took 2-5x longer there), so a
    # request decoded beside others gets what it gets alone; a longer prompt runs the model's fp32 modules, exactly.

    monkeypatch.setattr(decoder_module, "FAST_MAX_PARAMS", 0)
    model = _model_with_visible_norms(family)
    prompts = [list(range(1, 13)), list(range(20, 30))]  # longer than BIG_HALF_MAX_ROWS: prefilled in fp32
    assert min(map(len, prompts)) > decoder_module.BIG_HALF_MAX_ROWS
    full = [model(torch.tensor([p + [7]]))[0, -1] for p in prompts]
    decoder, exact = Decoder(model, slots=2, one_row_half=True), Decoder(model, slots=2, one_row_half=False)
    assert decoder.half_kind == "bf16"
    for slot, prompt in enumerate(prompts):
        decoder.prefill(slot, prompt)
        exact.prefill(slot, prompt)
    for (keys, values), (exact_keys, exact_values) in zip(decoder.cache, exact.cache):  # the prompts' layers: fp32
        torch.testing.assert_close(keys, exact_keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values, exact_values, atol=1e-5, rtol=1e-5)
    together = decoder.step([0, 1], [7, 7], [12, 10])
    for row, expected in zip(together, full):
        torch.testing.assert_close(row, expected, atol=HALF_TOLERANCE["bf16"] * expected.abs().max().item(), rtol=0)
        assert not torch.equal(row, expected)  # the copy, not the fp32 weights
    alone = decoder.step([1], [7], [10])[0]  # position 10 again: the same cache entry rewritten
    torch.testing.assert_close(alone, together[1], atol=1e-4 * together[1].abs().max().item(), rtol=0)
    assert decoding.prepared_weight_copies(1_240_000_000, 2048, "fp32", "cpu") == 0.5  # the copy alone


def test_an_idle_decode_loop_thread_ends_and_the_next_request_starts_another(monkeypatch):
    # An idle loop thread ends so that its OpenMP team does not slow other threads' torch work (slm_core.infer.openmp)
    import time


    monkeypatch.setattr(engine_module, "IDLE_EXIT_S", 0.05)
    model = tiny("llama")
    engine = Engine(model, ByteTokenizer(), slots=2, dtype="fp32")
    greedy = SamplingParams(10, temperature=0)
    expected = list(decode_one(Decoder(model, 1), [1, 2, 3], greedy, stop_ids=(63,)))
    assert list(engine.submit([1, 2, 3], greedy)) == expected
    first = engine._thread
    deadline = time.monotonic() + 10
    while first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not first.is_alive() and engine._thread is None
    assert list(engine.submit([1, 2, 3], greedy)) == expected and engine._thread is not first
    engine.close()
    assert not engine._thread.is_alive()  # close waits for its loop thread


def test_in_fresh_thread_returns_the_result_and_raises_the_error_in_the_caller():
    from slm_core.errors import SLMError
    from slm_core.infer.openmp import in_fresh_thread

    def load():
        raise SLMError("bad model")

    assert in_fresh_thread(lambda: threading.current_thread()) is not threading.current_thread()
    with pytest.raises(SLMError, match="bad model"):
        in_fresh_thread(load)

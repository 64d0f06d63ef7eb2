"""Preference tuning (train.mode dpo | orpo): the losses and their gradients equal TRL's on the same batch, the
reference with the LoRA adapter off equals a frozen copy's, bad rows are named by line, and a DPO run on the
shipped pairs raises the held-out choice accuracy and leaves a run folder everything downstream reads."""

import copy
import json

import pytest
import torch

from slm_core.config import LoRAConfig, ModelConfig, PreferenceConfig, load_recipe
from slm_core.data.preference import (
    BUILTIN,
    PreferenceData,
    Row,
    builtin_pairs,
    fit,
    parse_row,
    prepare_preferences,
    read_rows,
    render,
)
from slm_core.errors import SLMError
from slm_core.models.hf import save_hf_folder, to_hf_state_dict
from slm_core.models.lora import apply_lora
from slm_core.models.model import Transformer
from slm_core.models.tokenizer import build_char
from slm_core.train.preference import (
    PreferenceLoss,
    dpo_losses,
    orpo_odds_ratio,
    reference_table,
    reply_logps,
)

PAIRS = [{"prompt": "The cat sat.", "chosen": " It purred.", "rejected": " purred It."},
         {"prompt": "A dog ran", "chosen": " to the park and back.", "rejected": " back and the park to."},
         {"prompt": "Mia found a seed.", "chosen": " She planted it.", "rejected": " it planted She."}]


@pytest.fixture(scope="module")
def chars():
    return build_char([" ".join(r[k] for r in PAIRS for k in r) + "abcdefghijklmnopqrstuvwxyz.,!?"])


def _tiny_model(vocab: int, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=32, context_length=64,
                                   vocab_size=vocab))


def _data(tmp_path, chars, rows=PAIRS, **overrides) -> PreferenceData:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_recipe("quickstart-cpu", [f"data.source={path}", "data.val_fraction=0.3",
                                            *(f"{k}={v}" for k, v in overrides.items())])
    return prepare_preferences(config, chars)


# ---- the losses against TRL's ---------------------------------------------------------------------

@pytest.mark.slow  # importing transformers and TRL: ~30 s under load
def test_dpo_loss_and_gradients_and_orpo_term_equal_trls_on_the_same_batch(tmp_path, chars):
    trl = pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    from datasets import Dataset

    ours = _tiny_model(chars.n_vocab)
    save_hf_folder(ours, chars, tmp_path / "hf")
    policy = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_tokenizer.pad_token = hf_tokenizer.pad_token or hf_tokenizer.eos_token
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], save_strategy="no", beta=0.3,
                         precompute_ref_log_probs=True)
    trainer = trl.DPOTrainer(model=policy, args=args, processing_class=hf_tokenizer,
                             train_dataset=Dataset.from_list(PAIRS))

    # the same batch both ways: ours as (x, y), TRL's as full rows with a completion mask
    rows = [render(parse_row(r, "test"), None, chars) for r in PAIRS]
    seqs = [p + c for p, c, _ in rows] + [p + r for p, _, r in rows]
    starts = [len(p) for p, _, _ in rows] * 2
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), chars.eot_id)
    attention, completion = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        input_ids[i, :len(seq)], attention[i, :len(seq)], completion[i, start:len(seq)] = torch.tensor(seq), 1, 1
    x = input_ids[:, :-1]
    y = torch.cat([input_ids[:, 1:].masked_fill(completion[:, 1:] == 0, -100),
                   torch.arange(len(PAIRS)).repeat(2)[:, None]], dim=1)
    with torch.no_grad():  # a reference unlike the policy, so rewards, loss and gradients are not trivial
        table = torch.stack(reply_logps(_tiny_model(chars.n_vocab, seed=1), x, y)[0].chunk(2), dim=1)

    trainer.model.train()  # its metrics go to the "train" table
    trl_loss = trainer._compute_loss(trainer.model, {
        "input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
        "ref_chosen_logps": table[:, 0], "ref_rejected_logps": table[:, 1]}, False)
    trl_loss.backward()
    loss, metrics = PreferenceLoss("dpo", PreferenceConfig(beta=0.3), {"train": table})(ours, x, y)
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5) and abs(loss.item() - 0.6931) > 1e-3
    for ours_name, theirs_name in (("reward_margin", "rewards/margins"), ("reward_accuracy", "rewards/accuracies"),
                                   ("rewards_chosen", "rewards/chosen")):
        assert metrics[ours_name].item() == pytest.approx(trainer._metrics["train"][theirs_name][-1], abs=1e-5)
    holder = _tiny_model(chars.n_vocab)
    holder.load_state_dict({name: p.grad for name, p in ours.named_parameters()}, strict=False)
    _, our_grads = to_hf_state_dict(holder)
    compared = 0
    for name, param in policy.named_parameters():
        if name in our_grads and param.grad is not None:
            assert torch.allclose(our_grads[name], param.grad, atol=1e-6, rtol=1e-4), name
            compared += 1
    assert compared >= 10

    # ORPO's odds-ratio term against TRL's (its loss is computed in ORPOTrainer.odds_ratio_loss)
    orpo_trainer = pytest.importorskip("trl.experimental.orpo.orpo_trainer")

    class Self:  # what ORPOTrainer.odds_ratio_loss reads from its trainer
        beta = 0.2
        accelerator = type("A", (), {"device": torch.device("cpu")})()

    avg_chosen, avg_rejected = torch.tensor([-1.2, -0.4, -2.0]), torch.tensor([-1.5, -0.3, -2.5])
    theirs = orpo_trainer.ORPOTrainer.odds_ratio_loss(Self(), avg_chosen, avg_rejected)
    ratio, log_odds = orpo_odds_ratio(avg_chosen, avg_rejected, beta=0.2)
    assert torch.allclose(ratio, theirs[0]) and torch.allclose(log_odds.mean(), theirs[4])


def test_dpo_loss_variants_follow_their_formulas():
    chosen, rejected = torch.tensor([-12.0, -30.0, -8.0]), torch.tensor([-14.0, -25.0, -8.5])
    ref_c, ref_r = torch.tensor([-13.0, -29.0, -9.0]), torch.tensor([-13.5, -26.0, -8.0])
    losses, reward_c, reward_r = dpo_losses(chosen, rejected, ref_c, ref_r, beta=0.1)
    delta = (chosen - ref_c) - (rejected - ref_r)
    assert torch.allclose(losses, -torch.nn.functional.logsigmoid(0.1 * delta))
    assert torch.allclose(reward_c - reward_r, 0.1 * delta)
    assert torch.allclose(dpo_losses(chosen, rejected, ref_c, ref_r, 0.1, "hinge")[0], torch.relu(1 - 0.1 * delta))
    n = torch.tensor([4, 10, 2])
    ipo = dpo_losses(chosen, rejected, ref_c, ref_r, 0.1, "ipo", n, n)[0]
    assert torch.allclose(ipo, (delta / n - 1 / 0.2) ** 2)


# ---- the reference ----------------------------------------------------------------------------------

def test_the_reference_with_the_adapter_off_equals_a_frozen_copy(tmp_path, chars):
    data = _data(tmp_path, chars)
    base = _tiny_model(chars.n_vocab)
    frozen = copy.deepcopy(base).eval()
    model = apply_lora(base, LoRAConfig(r=4, alpha=8, dropout=0.0, targets="all"))
    with torch.no_grad():  # a trained adapter: the policy differs from its base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    x, y = data.batch("train", [0, 1], 64)
    loss = PreferenceLoss("dpo", PreferenceConfig())
    ref_chosen, ref_rejected = loss._reference(model, x, y, "train")
    with torch.no_grad():
        expected = reply_logps(frozen, x, y)[0].chunk(2)
        policy = reply_logps(model, x, y)[0].chunk(2)
    assert torch.allclose(ref_chosen, expected[0], atol=1e-5) and torch.allclose(ref_rejected, expected[1], atol=1e-5)
    assert not torch.allclose(policy[0], expected[0], atol=1e-3)  # the adapter is back on afterwards


def test_full_training_reference_is_computed_once_and_cached_beside_the_pairs(tmp_path, chars):
    data = _data(tmp_path, chars)
    model = _tiny_model(chars.n_vocab)
    table = reference_table(model, data, 64)
    files = list(data.cache_dir.glob("reference-*.npz"))
    assert len(files) == 1 and table["train"].shape == (data.pairs("train"), 2)
    x, y = data.batch("val", range(data.pairs("val")), 64)
    with torch.no_grad():
        assert torch.allclose(table["val"][:, 0], reply_logps(model, x, y)[0].chunk(2)[0], atol=1e-5)
    again = reference_table(model, data, 64)
    assert torch.equal(again["train"], table["train"]) and len(list(data.cache_dir.glob("reference-*"))) == 1
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # another base: its own file
    reference_table(model, data, 64)
    assert len(list(data.cache_dir.glob("reference-*.npz"))) == 2


# ---- rows ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, says", [
    ({"prompt": "Hi", "chosen": "Hello"}, "line 2: no 'rejected'"),
    ({"prompt": "Hi", "chosen": "", "rejected": "Go"}, "line 2: 'chosen' is empty"),
    ({"prompt": "  ", "chosen": "Hello", "rejected": "Go"}, "line 2: 'prompt' is empty"),
    ({"prompt": "Hi", "chosen": "Same", "rejected": "Same"}, "line 2: 'chosen' and 'rejected' are the same"),
    ({"chosen": [{"role": "user", "content": "Hi"}], "rejected": "x"}, "line 2: 'chosen' ends with a 'user'"),
])
def test_a_bad_row_is_named_by_its_line_in_one_line(tmp_path, row, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps(row) + "\n" + json.dumps(PAIRS[1]) + "\n")
    with pytest.raises(SLMError) as error:
        read_rows(load_recipe("quickstart-cpu", [f"data.source={path}"]))
    assert says in str(error.value) and "\n" not in str(error.value) and str(path) in str(error.value)


def test_csv_rows_and_conversations(tmp_path, chars):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\nHi,Hello there,Go away\nYo,,Bye\n")
    with pytest.raises(SLMError, match="line 3: 'chosen' is empty"):
        read_rows(load_recipe("quickstart-cpu", [f"data.source={path}"]))
    user = {"role": "user", "content": "Name a color."}
    implicit = parse_row({"chosen": [user, {"role": "assistant", "content": "Blue."}],
                          "rejected": [user, {"role": "assistant", "content": "Seven."}]}, "here")
    explicit = parse_row({"prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
                          "rejected": [{"role": "assistant", "content": "Seven."}]}, "here")
    assert implicit == explicit == Row([user], "Blue.", "Seven.", chat=True)
    prompt, chosen, rejected = render(implicit, "chatml", chars)
    assert chars.decode(prompt) == "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    assert chosen[-1] == rejected[-1] == chars.eot_id and chars.decode(chosen[:-1]) == "Blue."


def test_batches_mask_the_prompt_and_carry_the_pair_index(tmp_path, chars):
    data = _data(tmp_path, chars)
    x, y = data.batch("train", [1, 0], 64)
    assert x.shape[0] == 4 and y.shape == (4, x.shape[1] + 1) and y[:, -1].tolist() == [1, 0, 1, 0]
    tokens, index = data._arrays["train"]
    start, n_prompt, n_chosen, _ = (int(v) for v in index[1])
    labels = y[0, :-1]
    assert labels[:n_prompt - 1].eq(-100).all()
    assert labels[labels != -100].tolist() == tokens[start + n_prompt:start + n_prompt + n_chosen].tolist()
    assert fit(list(range(50)), list(range(100, 130)), 40) == (list(range(30, 50)), list(range(100, 120)))


def test_the_shipped_pairs_are_deterministic_coherent_and_shuffled():
    pairs = builtin_pairs(200)
    assert pairs == builtin_pairs(200) and len(pairs) == 200
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and sorted(pair["chosen"]) == sorted(pair["rejected"])
    assert read_rows(load_recipe("quickstart-cpu", [f"data.source={BUILTIN}", "data.max_documents=50"]))[0].chosen


# ---- runs ---------------------------------------------------------------------------------------------

def _pref_config(base, mode: str, steps: int, *extra: str):
    return load_recipe("quickstart-cpu", [
        f"train.mode={mode}", f"train.init_from={base}", f"data.source={BUILTIN}", "data.max_documents=400",
        "data.val_fraction=0.2", "model.context_length=64", "train.batch_size=8", "train.precision=fp32",
        "train.eval_batches=8", "train.sample_tokens=4", "train.warmup_steps=0", "train.schedule=constant",
        f"train.max_steps={steps}", f"train.eval_interval={steps // 2}", f"train.ckpt_interval={steps // 2}", *extra])


def _stopped_then_resumed(config, run_dir, stop_at: int) -> None:
    """A run stopped at `stop_at` and resumed from its checkpoint (the kill -9 path: tests/test_kill_loop.py)."""
    from slm_core.run import runs
    from slm_core.train.loop import train

    def stop(event):
        if event.get("kind") == "train" and event["step"] == stop_at:
            runs.request(run_dir, "stop")

    assert train(config, run_dir, progress=False, callback=stop)["state"] == "stopped"
    assert train(config, run_dir, resume=True, progress=False)["state"] == "finished"
    steps = [r["step"] for r in runs.read_metrics(run_dir) if r["kind"] == "train"]
    assert steps == list(range(1, config.train.max_steps + 1))  # each step once across the resume


@pytest.mark.slow  # 20 DPO steps and a resume, then chat, evaluate, quantize and export on the result
def test_a_dpo_run_raises_held_out_choice_accuracy_resumes_and_reads_like_any_run(tmp_path, tiny_char_run, capsys):
    from slm_core.cli import main
    from slm_core.infer.generate import complete
    from slm_core.models.load import load_model
    from slm_core.run import runs

    run_dir = tmp_path / "dpo"
    _stopped_then_resumed(_pref_config(tiny_char_run, "dpo", 20, "preference.lora=false", "train.lr=0.003"),
                          run_dir, stop_at=10)
    rows = runs.read_metrics(run_dir)
    for key in ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "choice_accuracy"):
        assert all(key in r for r in rows if r["kind"] == "train")
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[0]["val_reward_accuracy"] == 0.0  # the policy starts as its reference
    # held-out pairs: the model itself now prefers the coherent reply more often (measured before any step too)
    assert evals[-1]["val_choice_accuracy"] >= evals[0]["val_choice_accuracy"] + 0.15, evals
    assert evals[-1]["val_reward_accuracy"] > 0.6 and evals[-1]["val_reward_margin"] > 0

    assert {"config.yaml", "tokenizer", "data.json", "metrics.jsonl", "samples.jsonl", "status.json"} <= {
        p.name for p in run_dir.iterdir()}
    loaded = load_model(run_dir)
    assert complete(loaded, "Once upon a time", max_new_tokens=8, temperature=0.0)
    for command in (["eval", str(run_dir), "--max-tokens", "2000"],
                    ["quantize", str(run_dir), "--method", "int8", "--report", "--eval-tokens", "2000"],
                    ["export", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]):
        assert main(command) == 0, capsys.readouterr().err
    assert main(["eval", str(tmp_path / "hf"), "--max-tokens", "2000"]) == 0, capsys.readouterr().err


@pytest.mark.slow  # a LoRA-DPO run with a resume, and transformers + peft imported
def test_a_lora_dpo_run_is_a_lora_run_whose_adapter_loads_in_peft(tmp_path, tiny_char_run, capsys):
    from slm_core.cli import main
    from slm_core.models.load import load_model

    run_dir = tmp_path / "lora-dpo"
    _stopped_then_resumed(_pref_config(tiny_char_run, "dpo", 4, "train.lr=0.01", "lora.targets=all"), run_dir, 2)
    best = run_dir / "checkpoints" / "best"
    assert (best / "adapter" / "adapter_model.safetensors").exists() and not (best / "model.safetensors").exists()

    transformers, peft = pytest.importorskip("transformers"), pytest.importorskip("peft")
    assert main(["export", str(tiny_char_run), "--format", "hf", "--out", str(tmp_path / "base-hf")]) == 0
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base-hf", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf_base, best / "adapter").eval()
    loaded = load_model(run_dir)
    ids = torch.tensor([loaded.tokenizer.encode("Once upon a time, there was")])
    with torch.no_grad():
        assert (theirs(ids).logits - loaded.model(ids)).abs().max() < 1e-4


@pytest.mark.slow  # two short runs, one computing the reference over every training pair
def test_full_dpo_and_orpo_runs_train_all_weights_and_log_their_terms(tmp_path, tiny_char_run):
    from slm_core.run import runs
    from slm_core.train.loop import train

    dpo = tmp_path / "dpo-full"
    train(_pref_config(tiny_char_run, "dpo", 4, "preference.lora=false", "train.lr=0.001"), dpo, progress=False)
    assert (dpo / "checkpoints" / "best" / "model.safetensors").exists()
    cached = prepare_preferences(_pref_config(tiny_char_run, "dpo", 4), _run_tokenizer(dpo))
    assert list(cached.cache_dir.glob("reference-*.npz"))  # computed once, beside the pair tokens

    orpo = tmp_path / "orpo"
    train(_pref_config(tiny_char_run, "orpo", 4, "preference.lora=false", "train.lr=0.001"), orpo, progress=False)
    rows = [r for r in runs.read_metrics(orpo) if r["kind"] == "train"]
    assert len(rows) == 4 and all("nll_loss" in r and "log_odds_ratio" in r and "reward_margin" in r for r in rows)


def _run_tokenizer(run_dir):
    from slm_core.models.tokenizer import Tokenizer

    return Tokenizer.load(run_dir / "tokenizer")

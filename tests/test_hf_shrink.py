"""'Shrink this model': a student from a subset of a real-shaped teacher's layers, then distilled."""

import json

import pytest
import torch
from hf_families import hf_model

from slm_core.errors import SLMError
from slm_core.models.hf import save_hf_folder
from slm_core.models.load import load_model
from slm_core.train.distill import distillation_loss
from slm_core.train.shrink import pick_layers, shrink, shrink_summary

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23, 7, 12]])


def test_layer_choice_keeps_first_and_last_and_refuses_nonsense():
    assert pick_layers(16, 4) == [0, 5, 10, 15] and pick_layers(4, 2) == [0, 3] and pick_layers(3, 3) == [0, 1, 2]
    with pytest.raises(SLMError, match="between 1 and 4"):
        pick_layers(4, 5)


def test_student_is_the_teacher_with_layers_dropped_and_distillation_closes_the_gap(tmp_path):
    hf = hf_model("llama-3.2", num_hidden_layers=4, scale=None)
    hf.save_pretrained(tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher").model.requires_grad_(False)
    student = shrink(teacher, 2)
    # the same computation as transformers' model with blocks 1 and 2 removed
    hf.model.layers = torch.nn.ModuleList([hf.model.layers[0], hf.model.layers[3]])
    hf.model.layers[1].self_attn.layer_idx = 1
    hf.config.num_hidden_layers = 2
    with torch.no_grad():
        assert (student(IDS) - hf(IDS, use_cache=False).logits).abs().max() < 1e-4

    summary = shrink_summary(teacher.config, 2)
    assert summary["student_params"] < summary["teacher_params"] and summary["expected_speedup"] > 1.0

    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (4, 24))
    losses = []
    for _ in range(12):
        with torch.no_grad():
            teacher_logits = teacher(batch)
        loss, _, kd = distillation_loss(student(batch), teacher_logits, batch.roll(-1, dims=1), alpha=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(kd.item())
    assert losses[-1] < 0.7 * losses[0], losses

    save_hf_folder(student, None, tmp_path / "student")
    written = json.loads((tmp_path / "student" / "config.json").read_text())
    assert written["num_hidden_layers"] == 2 and written["rope_parameters"]["rope_type"] == "llama3"
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "student", dtype=torch.float32)
    with torch.no_grad():
        assert (back(IDS).logits - student(IDS)).abs().max() < 1e-4


@pytest.fixture(scope="module")
def llama2_teacher(tmp_path_factory):
    """A 4-layer Llama-2-shaped teacher beside the real Llama 2 tokenizer (32k rows: the cheapest real one)."""
    from hf_families import tokenizer_copy

    folder = tokenizer_copy("llama-spm", tmp_path_factory.mktemp("llama2-teacher"))
    hf_model("llama-2", vocab_size=32000, num_hidden_layers=4, scale=None).save_pretrained(folder)
    return folder


@pytest.mark.slow  # ~30 s on 2 cores: a 32k-row output layer for teacher and student
def test_slm_shrink_prints_the_plan_then_distills_a_student_that_loads_and_generates(llama2_teacher, tmp_path,
                                                                                     capsys):
    from slm_core.cli import main
    from slm_core.infer.generate import complete
    from slm_core.run import runs

    small = ["data.max_chars=20000", "model.context_length=64", "train.batch_size=4", "train.eval_interval=12",
             "train.ckpt_interval=12", "train.eval_batches=2", "train.lr=0.01", "train.warmup_steps=0",
             "train.precision=fp32", "train.sample_tokens=2"]
    code = main(["shrink", str(llama2_teacher), "--layers", "2", "--steps", "12", "--name", "small", "--quiet",
                 "--runs-dir", str(tmp_path), *[a for item in small for a in ("--set", item)]])
    assert code == 0
    out = capsys.readouterr().out
    assert "4 → 2 layers (keeping the teacher's 0, 3)" in out and "expected speed-up per token: 1." in out
    evals = [m for m in runs.read_metrics(tmp_path / "small") if m["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3, evals
    train_rows = [m for m in runs.read_metrics(tmp_path / "small") if m["kind"] == "train"]
    assert "kd_loss" in train_rows[-1]  # it learned from the teacher, not only from the labels

    student = load_model(tmp_path / "small")
    assert student.model.config.n_layer == 2 and student.tokenizer.n_vocab == 32000  # the teacher's tokenizer
    assert isinstance(complete(student, "Hello", max_new_tokens=4, temperature=0.0), str)


def test_shrink_refuses_impossible_requests_in_one_line(llama2_teacher, tmp_path, capsys):
    from slm_core.cli import main
    from slm_core.config import load_recipe

    assert main(["shrink", str(llama2_teacher), "--layers", "5", "--runs-dir", str(tmp_path)]) == 2
    assert "between 1 and 4 layers" in capsys.readouterr().err
    with pytest.raises(SLMError, match="leave train.init_from unset"):
        load_recipe("shrink-cpu", [f"distill.teacher={llama2_teacher}", "train.init_from=somewhere"]).check_ready()

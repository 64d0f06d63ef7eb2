"""'Shrink this model': a student from a subset of a real-shaped teacher's layers, then distilled."""

import json

import pytest
import torch

from slm_core.checkpoint import load_model
from slm_core.distill import distillation_loss
from slm_core.errors import SLMError
from slm_core.hf_convert import save_hf_folder
from slm_core.shrink import pick_layers, shrink, shrink_summary

from hf_families import hf_model

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

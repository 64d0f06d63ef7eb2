"""Run files → figures: what the Train and Runs tabs draw from metrics.jsonl rows."""

import math

from studio.plots import latest_attempt, loss_figure, overlay_figure, run_events, split_rows, thin, training_figure


def train_row(step, loss, **extra):
    return {"kind": "train", "step": step, "tokens": step * 100, "loss": loss, "lr": 1e-3, "tokens_per_sec": 500.0,
            "ram_mb": 900.0, "cpu_percent": 180.0, **extra}


def eval_row(step, val_loss):
    return {"kind": "eval", "step": step, "tokens": step * 100, "val_loss": val_loss}


def traces_named(fig):
    return {t.name: t for t in fig.data}


def test_a_resumed_run_shows_each_step_once_from_its_latest_attempt():
    # Crashed at step 5 after a checkpoint at 3; the resume redid 4 and 5 with different losses.
    rows = [train_row(s, 10 - s) for s in range(1, 6)] + [eval_row(3, 7.5)] + \
           [train_row(4, 1.0), train_row(5, 0.5), eval_row(5, 0.7)]
    train, evals = split_rows(rows)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in train][-2:] == [1.0, 0.5]
    assert [e["step"] for e in evals] == [3, 5]
    assert latest_attempt([])== []


def test_training_figure_shares_one_axis_for_loss_lr_throughput_and_memory():
    rows = [train_row(s, 5 - 0.1 * s) for s in range(1, 21)] + [eval_row(10, 4.3), eval_row(20, 3.9)]
    fig = training_figure(rows, x="step", log_y=True, revision="run-a")
    named = traces_named(fig)
    assert list(named["train loss"].x) == list(range(1, 21))
    assert list(named["validation loss"].y) == [4.3, 3.9]
    assert {"learning rate", "tokens/s", "process RAM", "CPU %"} <= set(named)
    assert fig.layout.yaxis.type == "log"  # the loss panel
    assert fig.layout.uirevision == "run-a"  # zoom survives refreshes
    # Every panel's x axis is matched to the bottom one (the events strip): memory lines up with loss.
    bottom = "x5"  # loss, learning rate, speed, memory, events
    assert fig.layout.xaxis.matches == fig.layout.xaxis2.matches == fig.layout.xaxis3.matches == bottom


def test_tokens_axis_and_distillation_and_gpu_memory_curves_when_present():
    rows = [train_row(s, 3.0, ce_loss=2.0, kd_loss=1.0, gpu_mem_allocated_mb=100.0, gpu_mem_reserved_mb=200.0,
                      gpu_mem_total_mb=80000.0) for s in (1, 2)]
    named = traces_named(training_figure(rows, x="tokens"))
    assert list(named["train loss"].x) == [100, 200]
    assert {"cross-entropy (labels)", "distillation (teacher)", "GPU allocated", "GPU reserved", "GPU total"} <= set(named)
    plain = traces_named(training_figure([train_row(1, 3.0)]))
    assert "distillation (teacher)" not in plain and "GPU allocated" not in plain


def test_empty_run_draws_a_message_not_an_error():
    fig = training_figure([])
    assert not fig.data and "No metrics yet" in fig.layout.annotations[0].text
    assert not loss_figure([]).data


def test_thinning_keeps_long_runs_light_and_keeps_the_last_point():
    rows = [train_row(s, 1.0) for s in range(1, 10_001)]
    kept = thin(rows, 2000)
    assert len(kept) <= 2001 and kept[-1]["step"] == 10_000 and kept[0]["step"] == 1


def test_overlay_draws_one_curve_per_run():
    fig = overlay_figure({"a": [eval_row(1, 3.0), eval_row(2, 2.0)], "b": [eval_row(1, 3.5)], "empty": []})
    assert [t.name for t in fig.data] == ["a", "b"]
    fig = overlay_figure({"a": [train_row(1, 3.0), train_row(2, 2.5)]}, metric="loss")
    assert list(fig.data[0].y) == [3.0, 2.5]


def titles(fig):
    return [a.text for a in fig.layout.annotations]


def test_telemetry_panels_grad_norm_speed_mfu_and_labelled_cpu_axis():
    rows = [train_row(s, 4.0, grad_norm=1.5 / s, step_ms=120.0 + s, mfu=0.31) for s in range(1, 4)]
    fig = training_figure(rows)
    named = traces_named(fig)
    assert list(named["gradient norm"].y) == [1.5, 0.75, 0.5]
    assert list(named["ms per step"].y) == [121.0, 122.0, 123.0]
    assert [round(v, 6) for v in named["MFU %"].y] == [31.0] * 3
    assert {"Gradient norm", "Model FLOPs utilisation (%)", "Speed: ms per step and tokens/s"} <= set(titles(fig))
    axis_titles = {fig.layout[k].title.text for k in fig.layout if k.startswith("yaxis") and fig.layout[k].title.text}
    assert {"CPU %", "ms/step", "tokens/s", "MB", "nats per token"} <= axis_titles
    # On a CPU (no known peak) the rows carry no mfu, and the panel is not drawn.
    assert "Model FLOPs utilisation (%)" not in titles(training_figure([train_row(1, 4.0)]))


def test_young_runs_tick_whole_steps_not_halves():
    fig = training_figure([train_row(1, 4.0), train_row(2, 3.9)])
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == ",d"


def test_events_are_markers_in_a_strip_and_lines_through_every_panel():
    rows = [train_row(s, 4.0) for s in range(1, 11)] + [eval_row(0, 5.0), eval_row(5, 4.0)] + [
        {"kind": "event", "event": "best", "step": 5, "tokens": 500},
        {"kind": "event", "event": "checkpoint", "step": 5, "tokens": 500},
        {"kind": "event", "event": "checkpoint", "step": 5, "tokens": 500},  # twice at one step: one marker
        {"kind": "event", "event": "paused", "step": 7, "tokens": 700},
        {"kind": "event", "event": "continued", "step": 7, "tokens": 700}]
    assert [(e["event"], e["step"]) for e in run_events(rows)] == [
        ("eval", 0), ("eval", 5), ("best", 5), ("checkpoint", 5), ("paused", 7), ("continued", 7)]
    fig = training_figure(rows)
    named = traces_named(fig)
    assert list(named["paused"].x) == [7] and list(named["checkpoint"].x) == [5] and list(named["evaluation"].x) == [0, 5]
    n_panels = len(titles(fig)) - 1  # every panel but the strip gets a line per pause, continue and best
    lines = [shape.x0 for shape in fig.layout.shapes]
    assert sorted(set(lines)) == [5, 7] and len(lines) == 3 * n_panels
    # On the tokens axis the same markers sit at the tokens of their step.
    assert list(traces_named(training_figure(rows, x="tokens"))["paused"].x) == [700]


def test_loss_in_bits_per_byte_uses_the_runs_bytes_per_token():
    rows = [train_row(1, 4.0), eval_row(1, 2.0)]
    fig = training_figure(rows, unit="bpb", bytes_per_token=2.0)
    named = traces_named(fig)
    assert math.isclose(named["train loss"].y[0], 4.0 / math.log(2) / 2.0)
    assert math.isclose(named["validation loss"].y[0], 2.0 / math.log(2) / 2.0)
    assert fig.layout.yaxis.title.text == "bits per byte"


def test_overlay_of_bits_per_byte():
    fig = overlay_figure({"a": [dict(eval_row(1, 3.0), val_bpb=1.2)], "b": [eval_row(1, 3.5)]}, metric="val_bpb")
    assert [t.name for t in fig.data] == ["a"] and list(fig.data[0].y) == [1.2]


def test_memory_draws_a_line_per_rank_even_after_thinning_a_long_run():
    # A 2-GPU torchrun run: rank 0's figures every step, rank 1's gathered every 10th step (and the 1st).
    def row(step):
        extra = {"gpu_mem_allocated_mb": 1000.0, "gpu_mem_peak_mb": 1500.0}
        if step == 1 or step % 10 == 0:
            extra.update(ram_mb_rank1=800.0 + step, gpu_mem_allocated_mb_rank1=1100.0, gpu_mem_peak_mb_rank1=1600.0)
        return train_row(step, 3.0, **extra)

    # 20,000 steps thin to every 10th row (steps 1, 11, 21, ...): none of them carries rank 1's figures.
    named = traces_named(training_figure([row(s) for s in range(1, 20_001)]))
    ram1 = named["process RAM, rank 1"]
    assert ram1.x[0] == 1 and ram1.x[-1] == 20_000 and 1000 <= len(ram1.x) <= 2001
    assert ram1.y[-1] == 20_800.0
    assert {"process RAM, rank 0", "GPU allocated, rank 0", "GPU allocated, rank 1", "GPU peak allocated, rank 1"} \
        <= set(named)
    assert named["GPU allocated, rank 1"].line.color == named["GPU allocated, rank 0"].line.color  # one colour a figure
    assert named["GPU allocated, rank 1"].line.dash != named["GPU allocated, rank 0"].line.dash  # a dash a rank
    # One process: the lines keep their plain names.
    assert "process RAM" in traces_named(training_figure([train_row(1, 3.0)]))

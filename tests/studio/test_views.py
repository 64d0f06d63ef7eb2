"""Status, notes, samples and logs as the tabs show them."""

from studio.views import (
    config_diff,
    error_from_log,
    failure_note,
    log_tail,
    overfitting_note,
    progress_html,
    runs_table,
    sample_timeline_html,
    status_markdown,
)


def train_row(step, loss):
    return {"kind": "train", "step": step, "tokens": step * 10, "loss": loss, "eta_s": 90, "tokens_per_sec": 1234.0,
            "elapsed_s": step}


def eval_row(step, val_loss):
    return {"kind": "eval", "step": step, "val_loss": val_loss}


def test_progress_shows_step_percentage_speed_and_eta():
    text = progress_html({"state": "running", "step": 40, "max_steps": 160}, [train_row(50, 2.0)])
    assert "step 50 / 160" in text and "31%" in text and "1,234 tokens/s" in text and "ETA 1m 30s" in text
    assert 'width:31.2%' in text
    assert "finished" in progress_html({"state": "finished", "step": 160, "max_steps": 160}, [])


def test_overfitting_is_called_out_with_the_best_checkpoint():
    train = [train_row(s, 3.0 - s / 100) for s in range(1, 101)]  # training loss keeps falling
    evals = [eval_row(20, 2.5), eval_row(40, 2.4), eval_row(60, 2.45), eval_row(80, 2.5), eval_row(100, 2.6)]
    note = overfitting_note(train + evals, {"best_step": 40, "best_val_loss": 2.4})
    assert "overfitting" in note and "step 40" in note and "2.4000" in note and "checkpoints/best" in note
    # Still improving, or rising for only two evaluations: no warning.
    assert overfitting_note(train + evals[:4]) == ""
    assert overfitting_note(train + [eval_row(20, 2.5), eval_row(40, 2.4), eval_row(60, 2.3)]) == ""
    # Validation rising while training loss rises too is divergence, not overfitting.
    rising = [train_row(s, 2.0 + s / 100) for s in range(1, 101)]
    assert overfitting_note(rising + evals) == ""


def test_failure_says_what_failed_where_and_for_oom_what_to_change():
    note = failure_note({"state": "failed", "step": 41, "failed_step": 42,
                         "error": "out of memory: try a smaller train.batch_size"})
    assert "failed at step 42" in note and "out of memory" in note
    for advice in ("batch size", "gradient checkpointing", "context length", "precision"):
        assert advice in note
    plain = failure_note({"state": "failed", "step": 3, "error": "data.source='x.txt' does not exist"})
    assert "step 4" in plain and "x.txt" in plain and "gradient checkpointing" not in plain
    assert failure_note({"state": "finished"}) == ""


def test_sample_timeline_puts_the_same_prompt_in_one_column_newest_step_first():
    samples = [{"step": 10, "prompt": "Once", "text": " upon"}, {"step": 10, "prompt": "The dog", "text": " ran"},
               {"step": 20, "prompt": "Once", "text": " upon a <time>"}]
    html = sample_timeline_html(samples)
    assert html.index("<th>Once</th>") < html.index("<th>The dog</th>")
    assert html.index(">20<") < html.index(">10<")
    assert "&lt;time&gt;" in html  # model text is escaped
    assert "appear" in sample_timeline_html([])


def test_log_tail_collapses_progress_bar_redraws_and_finds_the_error():
    log = "$ slm train\nloading\rtrain: 10%\rtrain: 20%\nTraceback (most recent call last):\n  File x\n" \
          "RuntimeError: boom\n\n"
    assert log_tail(log).splitlines() == ["$ slm train", "train: 20%", "Traceback (most recent call last):",
                                          "  File x", "RuntimeError: boom"]
    assert log_tail(log, lines=1) == "RuntimeError: boom"
    assert error_from_log(log) == "RuntimeError: boom"
    assert error_from_log("run: x\nerror: data.source='y' does not exist: name a file\n") == \
        "data.source='y' does not exist: name a file"


def test_runs_table_and_config_diff():
    rows = runs_table([{"name": "a", "state": "finished", "mode": "pretrain", "preset": "quickstart-cpu", "step": 600,
                        "max_steps": 600, "tokens": 2_457_600, "best_val_loss": 1.91234, "duration_s": 605,
                        "parent": None, "started_at": 0}])
    assert rows[0][:8] == ["a", "finished", "pretrain", "quickstart-cpu", "600 / 600", "2.5M", "1.9123", "10m 05s"]
    diff = config_diff({"train": {"lr": 0.001, "steps": 5}, "model": {"n_layer": 4}},
                       {"train": {"lr": 0.002, "steps": 5}, "model": {"n_layer": 4}, "lora": {"r": 8}})
    assert diff == [["lora.r", "—", "8"], ["train.lr", "0.001", "0.002"]]
    assert "press **Start**" in status_markdown("", {})


def test_samples_of_two_steps_diff_word_by_word():
    from studio.views import sample_diff_html, sample_steps

    samples = [{"step": 0, "prompt": "Once", "text": "xq zz the"}, {"step": 10, "prompt": "Once", "text": "upon a the"},
               {"step": 0, "prompt": "Dog", "text": "bark"}, {"step": 10, "prompt": "Dog", "text": "bark \ufffd"}]
    assert sample_steps(samples) == [10, 0]
    html = sample_diff_html(samples, 0, 10)
    assert "<del>xq zz</del>" in html and "<ins>upon a</ins>" in html and " the" in html
    assert "step 0 → step 10" in html and "\ufffd" not in html  # invalid bytes shown as the muted dot
    assert "Pick two steps" in sample_diff_html(samples, None, 10)

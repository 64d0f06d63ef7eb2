"""The helper process: torch-using estimates and data calls out of the server, errors as SLMError, idle exit."""

import time

import pytest

from slm_core.config import load_model_preset
from slm_core.errors import SLMError
from studio.helper import Helper
from studio.tabs.data import preview
from studio.tabs.model import estimate_text


def test_estimates_and_previews_come_from_the_helper_and_it_exits_when_idle():
    helper = Helper(idle_s=3)
    try:
        info = helper.call("describe", {"model": load_model_preset("tiny-llama").to_dict(), "batch_size": 4})
        assert info["params"]["total"] > 1e6 and info["training"]["total_mb"] > 0
        text, bad = estimate_text(helper, "tiny-llama", {"n_layer": 2}, {"train.batch_size": 4})
        assert "Parameters" in text and "Training memory" in text and bad == {}
        # A width the heads do not divide: explained under both fields, no estimate, no helper call needed.
        text, bad = estimate_text(helper, "tiny-llama", {"n_head": 3}, {})
        assert set(bad) == {"d_model", "n_head"} and "divisible" in bad["n_head"]
        summary, records, _ = preview(helper, "builtin", "", "", 50_000)
        assert "documents" in summary and "slm-record" in records
        with pytest.raises(SLMError, match="not found"):
            helper.call("preview", {"data": {"source": "/no/such/file.txt"}})
        assert helper.running  # an error does not cost the helper
        deadline = time.time() + 30
        while helper.running and time.time() < deadline:
            time.sleep(0.2)
        assert not helper.running  # idle: gone, and torch's memory with it
        assert helper.call("describe", {"model": load_model_preset("tiny-gpt").to_dict()})["params"]["total"] > 0
    finally:
        helper.close()

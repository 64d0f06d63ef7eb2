"""The import path older docs show, kept: `from slm_core.generate import complete`."""

from slm_core.infer.generate import complete, generate_tokens, stream_text

__all__ = ["complete", "generate_tokens", "stream_text"]

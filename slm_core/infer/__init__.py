"""Inference: sampling, the decoder and engine, runtimes and the OpenAI-compatible server."""

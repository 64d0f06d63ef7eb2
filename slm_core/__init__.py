"""slm_core: the headless engine of SLM Studio (no Gradio). Train, distill, fine-tune, quantize,
export and generate with small language models; `slm` / `python -m slm_core` is its command line."""

__version__ = "0.1.0"

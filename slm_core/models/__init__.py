"""Models: the network, tokenizers, templates, weight sources and formats, loading."""

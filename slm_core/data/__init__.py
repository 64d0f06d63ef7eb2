"""Data: sources, streaming, tokenizing once into a cached token file, the built-in corpus."""

"""The import path older docs show, kept: `from slm_core.checkpoint import load_model`."""

from slm_core.models.load import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]

"""Model backends behind one protocol (`base.LanguageModel`); see `registry.load_model`."""

from distillscope.models.base import LanguageModel, ModelError, TokenizerMismatchError
from distillscope.models.registry import load_model

__all__ = ["LanguageModel", "ModelError", "TokenizerMismatchError", "load_model"]

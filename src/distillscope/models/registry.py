"""Name -> backend, imported lazily so `import distillscope` needs no torch, vLLM or GPU."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distillscope.config import ModelSpec
    from distillscope.models.base import LanguageModel

_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    # name: (module, factory, pip extra that provides it)
    "hf": ("distillscope.models.hf", "load_hf_model", None),
    "vllm": ("distillscope.models.vllm", "load_vllm_model", "vllm"),
    "toy": ("distillscope.models.toy", "load_toy_model", None),
    "openai": ("distillscope.models.openai", "load_openai_model", None),
}


def available_backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def backend_factory(name: str) -> Callable[[ModelSpec], LanguageModel]:
    if name not in _BACKENDS:
        raise ValueError(f"unknown model backend '{name}'; allowed: {', '.join(_BACKENDS)}")
    module, attr, extra = _BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        if extra is not None:
            raise ImportError(
                f"backend '{name}' needs an extra: pip install 'distillscope[{extra}]' ({err})"
            ) from None
        raise
    return getattr(mod, attr)


def load_model(spec: ModelSpec) -> LanguageModel:
    return backend_factory(spec.backend)(spec)

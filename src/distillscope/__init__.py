"""distillscope: per-token, training-free diagnostics for on-policy distillation.

The public API. Heavy backends (torch models, vLLM, Ray) are imported only when used.
"""

from distillscope.config import RunConfig, load_config

__version__ = "0.1.0"

__all__ = ["RunConfig", "__version__", "load_config"]

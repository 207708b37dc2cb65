"""distillscope: per-token, training-free diagnostics for on-policy distillation.

The public API. Everything that needs torch or a model backend is imported on first use, so
`import distillscope` stays light.

    from distillscope import load_config, run, write_report
    cfg = load_config("configs/toy.yaml")
    run(cfg, "runs/toy")            # phases 0-2, resumable
    write_report("runs/toy")        # summary.json, tables, plots, report.html
"""

from __future__ import annotations

import importlib
from typing import Any

from distillscope.config import ConfigError, RunConfig, load_config, parse_config

__version__ = "0.1.0"

_LAZY = {
    "run": ("distillscope.pipeline", "run"),
    "screen_run": ("distillscope.pipeline", "screen_run"),
    "RunStore": ("distillscope.store", "RunStore"),
    "write_report": ("distillscope.report", "write_report"),
    "export_weights": ("distillscope.export", "export_weights"),
    "render_path": ("distillscope.show", "render_path"),
    "load_model": ("distillscope.models.registry", "load_model"),
    "get_task": ("distillscope.tasks", "get_task"),
    "analysis": ("distillscope.analysis", None),
    "gradients": ("distillscope.gradients", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distillscope' has no attribute '{name}'")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


__all__ = ["ConfigError", "RunConfig", "__version__", "load_config", "parse_config", *_LAZY]

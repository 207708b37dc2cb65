"""Benchmarks: one module each (loader + verifier); `get_task(name)` imports lazily."""

from __future__ import annotations

import importlib

from distillscope.tasks.base import Task, TaskError

_TASKS = {
    "boolq": ("distillscope.tasks.boolq", "BoolQTask"),
    "mmlu": ("distillscope.tasks.mmlu", "MMLUTask"),
    "aime2024": ("distillscope.tasks.aime", "AIME2024Task"),
    "aime2025": ("distillscope.tasks.aime", "AIME2025Task"),
    "custom": ("distillscope.tasks.custom", "CustomTask"),
    "quickstart": ("distillscope.tasks.quickstart", "QuickstartTask"),
    "toy": ("distillscope.tasks.toy", "ToyTask"),
}


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise TaskError(f"unknown task '{name}'; allowed: {', '.join(_TASKS)}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Task", "TaskError", "get_task"]

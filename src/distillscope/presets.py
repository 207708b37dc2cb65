"""Built-in run configurations. `configs/*.yaml` are the same presets as files; a test keeps
configs/quickstart.yaml equal to `quickstart_config()`."""

from __future__ import annotations

from distillscope.config import RunConfig, parse_config

QUICKSTART = {
    "name": "quickstart",
    "seed": 0,
    "student": {"backend": "hf", "model": "embedded:smollm2-135m", "device": "cpu"},
    "teachers": [
        {"name": "self-1c", "mode": "self-1c"},
        {"name": "self-1c1w", "mode": "self-1c1w"},
        {"name": "self-sum-1c", "mode": "self-sum-1c"},
    ],
    "task": {"name": "quickstart", "ids": ["qs-yn-01", "qs-mc-04", "qs-yn-04", "qs-yn-05",
                                           "qs-mc-00", "qs-mc-01", "qs-mc-02", "qs-mc-03"]},
    "sampling": {"temperature": 1.0, "max_new_tokens": 32, "batch_groups": 8},
    "context": {"demo_temperature": 0.7, "max_trials": 16},
    "tree": {"G": 32, "n_correct_paths": 1, "n_incorrect_paths": 1, "top_k": 2, "top_r": 2,
             "n_min": 20, "n_sig": 12, "window_base": 8, "group_size": 64},
}


def quickstart_config() -> RunConfig:
    return parse_config(QUICKSTART, "quickstart preset")

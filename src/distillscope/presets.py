"""Built-in run configurations. `configs/*.yaml` are the same presets as files; a test keeps
configs/quickstart.yaml equal to `quickstart_config()`."""

from __future__ import annotations

from distillscope.config import RunConfig, parse_config

# The quickstart's two settings: the bundled yes/no and multiple-choice questions, the first
# twelve of each kind for which the student finds a correct demonstration within 16 trials
# (qs-yn-07, qs-yn-14, qs-mc-05 and qs-mc-12 have none, so the paper's rule would exclude them).
QUICKSTART_IDS = {
    "yesno": ["qs-yn-00", "qs-yn-01", "qs-yn-02", "qs-yn-03", "qs-yn-04", "qs-yn-05",
              "qs-yn-06", "qs-yn-08", "qs-yn-09", "qs-yn-10", "qs-yn-11", "qs-yn-12"],
    "choice": ["qs-mc-00", "qs-mc-01", "qs-mc-02", "qs-mc-03", "qs-mc-04", "qs-mc-06",
               "qs-mc-07", "qs-mc-08", "qs-mc-09", "qs-mc-10", "qs-mc-11", "qs-mc-13"],
}
QUICKSTART_SETTINGS = (("yesno", "yes/no"), ("choice", "multiple choice"))


def _quickstart(kind: str) -> dict:
    return {
        "name": f"quickstart-{kind}",
        "seed": 0,
        # bfloat16 weight products, in sampling and scoring alike: the student is that model
        # (3.7x faster products on this kind of CPU; docs/method.md#the-embedded-student)
        "student": {"backend": "hf", "model": "embedded:smollm2-135m", "device": "cpu",
                    "options": {"matmul_dtype": "bfloat16"}},
        "teachers": [
            {"name": "self-1c", "mode": "self-1c"},
            {"name": "self-1c1w", "mode": "self-1c1w"},
            {"name": "self-sum-1c", "mode": "self-sum-1c"},
        ],
        "task": {"name": "quickstart", "ids": list(QUICKSTART_IDS[kind])},
        "sampling": {"temperature": 1.0, "max_new_tokens": 32, "batch_groups": 16},
        "context": {"demo_temperature": 0.7, "max_trials": 16},
        # two paths of each kind at ten rollouts per chosen child, sixteen children per
        # sampler call: about twice the decision points of one path each at twenty
        # ("The quickstart's headline" in benchmarks/RESULTS.md)
        "tree": {"G": 32, "n_correct_paths": 2, "n_incorrect_paths": 2, "top_k": 2, "top_r": 2,
                 "n_min": 10, "n_sig": 8, "window_base": 8, "group_size": 64},
    }


QUICKSTART = _quickstart("yesno")


def quickstart_config(kind: str = "yesno") -> RunConfig:
    """The quickstart preset of one setting: 'yesno' (configs/quickstart.yaml) or 'choice'
    (configs/quickstart-choice.yaml)."""
    if kind not in QUICKSTART_IDS:
        raise ValueError(f"quickstart setting must be one of {', '.join(QUICKSTART_IDS)}")
    return parse_config(_quickstart(kind), f"quickstart preset ({kind})")

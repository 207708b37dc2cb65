"""The settings `compare` puts side by side: one per run directory, with its label (from the
run's config, or given and checked), its decision points and what is known to be wrong with
it (a stopped run; a teacher name that means different teachers in different runs).

    load_settings(run_dirs, labels=None, min_sr_range=None) -> [Setting]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from distillscope.stakes import high_stakes

__all__ = ["POOLED", "Setting", "check_labels", "load_settings", "setting_label",
           "teacher_conflicts"]

POOLED = "all settings (pooled)"  # the correct-vs-incorrect row over every setting's questions


@dataclass
class Setting:
    label: str
    run_dir: Path
    nodes: pd.DataFrame
    student: str = "?"
    task: str = "?"
    config: dict = field(default_factory=dict)
    incomplete: str | None = None  # the run was stopped before its end (header.incomplete_note)


def setting_label(config: dict, fallback: str) -> tuple[str, str, str]:
    """(label, student, task) from a run's resolved config."""
    student = str((config.get("student") or {}).get("model") or "?")
    task = str((config.get("task") or {}).get("name") or "?")
    if student == "?" and task == "?":
        return fallback, student, task
    return f"{student} · {task}", student, task


def _control_chars(text: str) -> list[str]:
    """The control characters in `text` (C0, DEL, C1 and bidi controls), as escapes."""
    from distillscope.report.data import BIDI_CONTROLS

    return sorted({repr(c)[1:-1] for c in text  # as escapes: \n, \x1b, \u202e
                   if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or ord(c) in BIDI_CONTROLS})


def check_labels(labels: Sequence[str], n_runs: int) -> list[str]:
    """Setting labels given by the user: one per run, each a non-blank single-line name with no
    control character (a newline or tab would break the .md tables and the terminal output),
    none equal to the pooled row's name, and no two alike (a label names a column group and
    compare.json keys). ValueError naming the label otherwise."""
    if len(labels) != n_runs:
        raise ValueError(f"{len(labels)} label(s) for {n_runs} run(s): give one --label "
                         "per run, or none")
    seen: set[str] = set()
    for label in labels:
        if not isinstance(label, str):
            raise ValueError(f"--label {label!r} is not a string")
        if not label.strip():
            raise ValueError(f"--label {label!r} is empty: give every setting a visible name")
        bad = _control_chars(label)
        if bad:
            raise ValueError(f"--label {label!r} contains a control character "
                             f"({', '.join(bad)}): use a one-line label of printable characters")
        if label == POOLED:
            raise ValueError(f"--label {label!r} is the name of the pooled row of the "
                             "correct-vs-incorrect table: choose another label")
        if label in seen:
            raise ValueError(f"--label {label!r} is given twice: give each setting its own "
                             "label")
        seen.add(label)
    return list(labels)


def _definition(teacher: dict) -> str:
    """What makes a stored teacher the teacher it is, as a comparable string: its mode and,
    for its model and source, the weights, dtype, prompt settings and the options that change
    the distribution (`options.RUNTIME_OPTIONS` left out; hf and vllm run the same weights).
    A definition that no longer validates is compared as stored."""
    from distillscope.config import ModelSpec, TeacherSpec
    from distillscope.models.options import RUNTIME_OPTIONS

    try:
        spec = TeacherSpec.model_validate(teacher)
    except ValueError:
        return json.dumps(teacher, sort_keys=True, default=str)

    def model(m: ModelSpec | None) -> dict | None:
        if m is None:
            return None
        return {"model": m.model, "dtype": m.dtype, "system_prompt": m.system_prompt,
                "enable_thinking": m.enable_thinking, "toy": m.backend == "toy",
                "options": {k: v for k, v in sorted(m.options.items())
                            if k not in RUNTIME_OPTIONS[m.backend]}}

    return json.dumps({"mode": spec.mode, "model": model(spec.model),
                       "source": model(spec.source)}, sort_keys=True, default=str)


def teacher_conflicts(settings: Sequence[Setting]) -> dict[str, str]:
    """Teacher names that mean different teachers in different settings (another mode, model
    or source in the runs' configs: `_definition`), each with a sentence saying where:
    `compare` pairs teachers by name, so such a row mixes two teachers. A self-* teacher is
    the same definition in every run (its model is each run's student, which is the
    setting); a device or a runtime option does not make another teacher."""
    defs: dict[str, dict[str, list[str]]] = {}
    for s in settings:
        for t in s.config.get("teachers") or []:
            if isinstance(t, dict) and "name" in t:
                defs.setdefault(str(t["name"]), {}).setdefault(_definition(t), []).append(
                    s.label)
    out = {}
    for name, groups in sorted(defs.items()):
        if len(groups) > 1:
            where = "; ".join(", ".join(labels) for labels in groups.values())
            out[name] = (f"teacher '{name}' is defined differently across settings (one "
                         f"definition per group: {where}): its row pairs different teachers "
                         "by name; rename one to compare them apart")
    return out


def load_settings(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None, *,
                  min_sr_range: float | None = None) -> list[Setting]:
    """One Setting per run directory; labels from the configs unless given (given labels are
    checked by `check_labels`: a bad or repeated one is a ValueError naming it). Derived labels
    of runs with the same student and task get their directory name appended (then a
    number)."""
    from distillscope.report.data import load_run
    from distillscope.report.header import incomplete_note
    from distillscope.store import RunStore

    if labels is not None:
        check_labels(labels, len(run_dirs))
    out = []
    for i, d in enumerate(run_dirs):
        run = load_run(d, ("nodes",))
        label, student, task = setting_label(run.config, run.run_dir.name)
        if labels is not None:
            label = str(labels[i])
        out.append(Setting(label, run.run_dir, high_stakes(run.nodes, min_sr_range), student,
                           task, run.config, incomplete_note(RunStore(run.run_dir))))
    seen: dict[str, int] = {}
    for s in out:
        seen[s.label] = seen.get(s.label, 0) + 1
    if labels is None:
        for s in out:
            if seen[s.label] > 1:
                s.label = f"{s.label} ({s.run_dir.name})"
    final: dict[str, int] = {}
    for s in out:  # still equal (same directory name twice): number them
        k = final.get(s.label, 0)
        final[s.label] = k + 1
        if k:
            s.label = f"{s.label} #{k + 1}"
    return out


# ---------------------------------------------------------------------------------------------
# Per-setting question means and their bootstrap

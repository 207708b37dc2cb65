"""Bad input: one clear message that names the problem, and nothing passed off as complete."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distillscope.config import ModelSpec, load_config
from distillscope.models.base import ModelError, TokenizerMismatchError
from distillscope.models.registry import load_model
from distillscope.pipeline import run
from distillscope.runtime import model_cache_key
from distillscope.store import RunStore
from distillscope.tasks.base import TaskError

ROOT = Path(__file__).resolve().parents[2]


def small(**kw):
    base = {"task.options.n_questions": 2, "tree.G": 40, "tree.n_min": 30}
    base.update(kw)
    cfg = load_config(ROOT / "configs" / "toy.yaml", base)
    return cfg.model_copy(update={"teachers": [t for t in cfg.teachers if t.name == "helpful"]})


class Wrapped:
    """A toy model with one behaviour broken; everything else delegates."""

    def __init__(self, inner, *, no_eos=False, nan=False):
        self.inner, self.no_eos, self.nan = inner, no_eos, nan

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, requests, params):
        out = self.inner.sample(requests, params)
        if not self.no_eos:
            return out
        eos = set(self.inner.eos_token_ids)
        return [[dataclasses.replace(c, token_ids=tuple(t for t in c.token_ids if t not in eos),
                                     finish_reason="length") for c in g] for g in out]

    def logprob_chunks(self, context_ids, response_ids, chunk_size=1024):
        for chunk in self.inner.logprob_chunks(context_ids, response_ids, chunk_size):
            if self.nan:
                chunk = chunk.clone()
                chunk[-1, 0] = float("nan")
            yield chunk


def _models(cfg, **kw):
    student = load_model(cfg.student)
    return {model_cache_key(cfg.student): Wrapped(student, **kw)}


def test_tokenizer_mismatch_is_named(tmp_path):
    cfg = small()
    teacher = cfg.teachers[0]
    other = teacher.model.model_copy(update={"options": {**teacher.model.options, "vocab": 10}})
    cfg = cfg.model_copy(update={"teachers": [teacher.model_copy(update={"model": other})]})
    with pytest.raises(TokenizerMismatchError, match="helpful.*does not share the student's"):
        run(cfg, tmp_path / "run")


def test_empty_dataset(tmp_path):
    with pytest.raises(TaskError, match="empty"):
        run(small(**{"task.offset": 5}), tmp_path / "run")


def test_prompt_longer_than_context(tmp_path):
    cfg = small(**{"student.options.max_context": 3})
    with pytest.raises(ModelError, match="longer than the student's context"):
        run(cfg, tmp_path / "run")


def test_model_that_never_emits_eos(tmp_path):
    cfg = small()
    with pytest.raises(ModelError, match="none of the 40 initial rollouts ended"):
        run(cfg, tmp_path / "run", models=_models(cfg, no_eos=True))
    # nothing was passed off as complete: no nodes, no finished question
    store = RunStore(tmp_path / "run")
    assert len(store.read("nodes")) == 0 and len(store.read("questions")) == 0


def test_nan_logits(tmp_path):
    cfg = small()
    with pytest.raises(ModelError, match="NaN/inf log-probabilities"):
        run(cfg, tmp_path / "run", models=_models(cfg, nan=True))
    assert len(RunStore(tmp_path / "run").read("nodes")) == 0


def test_trust_remote_code_is_off_by_default():
    assert ModelSpec().trust_remote_code is False


def test_no_pickle_anywhere_in_the_package():
    src = ROOT / "src" / "distillscope"
    offenders = [p for p in src.rglob("*.py")
                 if any(w in p.read_text() for w in ("import pickle", "torch.load(", "np.load("))]
    assert offenders == []
    # yaml is only ever read with safe_load
    unsafe = [p for p in src.rglob("*.py") if "yaml.load(" in p.read_text()]
    assert unsafe == []
    from distillscope.config import _UniqueKeyLoader  # the config's own loader: a safe one

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


def test_toy_logprobs_are_finite():
    # the NaN test above is meaningful only if the unbroken model is finite
    m = load_model(small().student)
    ctx = m.encode_chat([{"role": "user", "content": "toy:0"}])
    chunk = next(m.logprob_chunks(ctx, [1, 2, 3]))
    assert torch.isfinite(chunk).all() and np.isclose(float(chunk.exp().sum(-1)[0]), 1.0)

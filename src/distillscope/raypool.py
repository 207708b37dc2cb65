"""The Ray worker pool behind `distributed.py`: one `ModelWorker` actor per GPU (or CPU slot),
replaced when it dies, and the deterministic split of a sampling call into shards.

`ray` is imported only inside functions: importing this module never needs it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from distillscope.config import ModelSpec
from distillscope.models.base import LanguageModel, ModelError
from distillscope.models.registry import load_model
from distillscope.types import Completion, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.scoring import PathScores


RAY_MISSING = "Ray is not installed: pip install 'distillscope[ray]'"


class WorkerLostError(ModelError):
    """A shard could not be computed: its actors kept dying (more than `max_retries`). The
    store holds every committed unit; running the same command again resumes."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _retriable_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean "the worker is gone", not "the work is wrong"."""
    from ray import exceptions as ex

    return (ex.RayActorError, ex.NodeDiedError, ex.WorkerCrashedError, ex.ObjectLostError)


def split_balanced(sizes: Sequence[int], k: int) -> list[tuple[int, int]]:
    """Cut items with these sizes into at most `k` contiguous, non-empty [start, stop) ranges
    of about equal total size. Deterministic: it depends on the sizes and k only."""
    n = len(sizes)
    if n == 0:
        return []
    k = max(1, min(k, n))
    weights = [max(0, int(s)) for s in sizes]
    if not sum(weights):
        weights = [1] * n
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    total = prefix[-1]
    cuts = [0]
    for j in range(1, k):
        # the cut whose prefix sum is nearest the j-th share, leaving an item per later range
        lo, hi = cuts[-1] + 1, n - (k - j)
        cuts.append(min(range(lo, hi + 1), key=lambda c: abs(prefix[c] * k - total * j)))
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


# ---------------------------------------------------------------------------------------------
# The actor
class ModelWorker:
    """Runs inside one Ray actor: models loaded from their specs (JSON keys) on first use."""

    def __init__(self, hide_gpus: bool = False) -> None:
        if hide_gpus:
            # before anything initialises CUDA in this process: a CPU actor must not see (and
            # allocate on) the GPUs that other actors were given
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self._models: dict[str, LanguageModel] = {}

    def visible_devices(self) -> dict[str, Any]:
        """What this actor's process can see (tests): CUDA_VISIBLE_DEVICES and the GPU count
        torch reports."""
        count = 0
        with contextlib.suppress(Exception):
            import torch

            count = torch.cuda.device_count()
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "cuda_device_count": count}

    def _model(self, key: str) -> LanguageModel:
        if key not in self._models:
            self._models[key] = load_model(ModelSpec.model_validate_json(key))
        return self._models[key]

    def load(self, keys: Sequence[str]) -> str:
        """Load these models now; returns where this worker runs (host, pid, devices)."""
        devices = sorted({self._model(k).device for k in keys})
        return f"{socket.gethostname()}:{os.getpid()}[{','.join(devices)}]"

    def sample(
        self, key: str, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        return self._model(key).sample(requests, params)

    def score_path(
        self,
        student_key: str,
        student_ctx: Sequence[int],
        teacher_key: str | None,
        teacher_ctx: Sequence[int] | None,
        response_ids: Sequence[int],
        kwargs: dict[str, Any],
    ) -> PathScores:
        from distillscope.scoring import score_path

        teacher = self._model(teacher_key) if teacher_key is not None else None
        return score_path(self._model(student_key), student_ctx, teacher, teacher_ctx,
                          response_ids, **kwargs)


# ---------------------------------------------------------------------------------------------
# The pool
class WorkerPool:
    """`num_workers` ModelWorker actors, each with `num_gpus` GPUs and `num_cpus` CPUs.

    `map(method, shards)` runs shard i on actor (rotation + i) % num_workers and returns the
    results in shard order; a shard whose actor dies is resubmitted (same arguments) to the
    next live actor while a replacement starts in the dead one's slot. `on_dispatch(pool)`, if
    given, is called after each dispatch, before any result is awaited (tests kill an actor
    there). `stats` counts dispatches, replaced actors and resubmitted shards.
    """

    def __init__(self, num_workers: int, *, num_gpus: float = 0, num_cpus: float = 1,
                 preload: Sequence[str] = (), max_retries: int = 3,
                 on_dispatch: Callable[[WorkerPool], None] | None = None) -> None:
        ray = _import_ray()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_gpus = float(num_gpus)
        self._actor_cls = ray.remote(num_gpus=self.num_gpus, num_cpus=num_cpus,
                                     max_restarts=0)(ModelWorker)
        self.preload = tuple(preload)
        self.max_retries = max_retries
        self.on_dispatch = on_dispatch
        self.actors: list[Any] = [self._new_actor() for _ in range(num_workers)]
        self.where: list[str] = []
        self.stats = {"dispatches": 0, "replaced": 0, "resubmitted": 0}
        self._turn = 0
        self._closed = False

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(hide_gpus=self.num_gpus == 0)

    @property
    def size(self) -> int:
        return len(self.actors)

    def start(self) -> list[str]:
        """Load the preload models on every actor (in parallel); returns where each runs."""
        self.where = self.map("load", [(list(self.preload),)] * self.size, rotate=False)
        return self.where

    def _replace(self, slot: int, dead: Any) -> None:
        ray = _import_ray()
        if self.actors[slot] is not dead:
            return  # already replaced (several shards were on it)
        with contextlib.suppress(Exception):  # already gone is fine
            ray.kill(dead, no_restart=True)
        fresh = self._new_actor()
        if self.preload:
            fresh.load.remote(list(self.preload))  # start loading now, in the background
        self.actors[slot] = fresh
        self.stats["replaced"] += 1

    def map(self, method: str, shards: Sequence[tuple], *, rotate: bool = True) -> list[Any]:
        if self._closed:
            raise RuntimeError("the worker pool was shut down")
        ray = _import_ray()
        retriable = _retriable_errors()
        n = self.size
        results: list[Any] = [None] * len(shards)
        tries = [0] * len(shards)
        pending: dict[Any, tuple[int, int, Any]] = {}

        def submit(i: int, slot: int) -> None:
            actor = self.actors[slot]
            pending[getattr(actor, method).remote(*shards[i])] = (i, slot, actor)

        first = self._turn if rotate else 0
        for i in range(len(shards)):
            submit(i, (first + i) % n)
        if rotate:
            self._turn = (first + len(shards)) % n
        self.stats["dispatches"] += 1
        if self.on_dispatch is not None:
            self.on_dispatch(self)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, slot, actor = pending.pop(ready[0])
            try:
                results[i] = ray.get(ready[0])
            except retriable as err:
                tries[i] += 1
                if tries[i] > self.max_retries:
                    raise WorkerLostError(
                        f"ray: shard {i} of '{method}' lost its worker {tries[i]} times; "
                        f"giving up (last error: {type(err).__name__}); committed work is "
                        f"kept: run the same command again to resume"
                    ) from err
                self._replace(slot, actor)
                self.stats["resubmitted"] += 1
                submit(i, (slot + 1) % n if n > 1 else slot)
        return results

    def call(self, method: str, *args: Any) -> Any:
        """One task on the next actor in rotation, with the same fault handling as `map`."""
        return self.map(method, [args])[0]

    def shutdown(self) -> None:
        if self._closed:
            return
        ray = _import_ray()
        for actor in self.actors:
            with contextlib.suppress(Exception):  # best effort
                ray.kill(actor, no_restart=True)
        self._closed = True

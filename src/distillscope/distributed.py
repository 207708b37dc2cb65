"""Scale-out on Ray: model actors do the sampling (and scoring); the driver owns the run store.

What: `run_on_ray(config, out, address=...)` is `pipeline.run` with every model replaced by a
`RayModel`, a proxy that implements the `LanguageModel` protocol for the driver. There is one
code path: the pipeline does not know it runs on a cluster.

* Actors. A `WorkerPool` starts one `ModelWorker` actor per GPU (`num_gpus=1`; on a CPU-only
  cluster one per CPU slot, `num_cpus=1`). Every actor is created with an explicit `num_gpus`;
  one with none hides every GPU itself (CUDA_VISIBLE_DEVICES=""), as Ray >= 2.5x no longer
  does that for `num_gpus=0` actors. An actor loads models from their `ModelSpec` on first
  use, on its own device, and keeps them.
* Sampling. `RayModel.sample(requests, params)` cuts the requests into contiguous shards of
  about equal sample counts, one per actor, sends them out, and gathers the completions in
  request order. A group's samples depend only on its own seed (models/base.py), so the result
  is the in-process result, whatever actor drew it.
* Text. Every rollout is decoded and graded on the driver, so it needs each model's tokenizer:
  for an hf checkpoint it loads the tokenizer and config only (`models.hf.load_hf_text`), not
  the weights.
* Scoring. `RayModel.logprob_chunks` runs on the driver's own copy of the model, loaded on
  first use (only then are the weights loaded there). `RayModel.score_path` runs
  `scoring.score_path` on an actor, where student and teacher live, and ships back only
  `PathScores` (O(T + candidates) numbers); it is what a GPU cluster wants, and is used by
  `scoring.score_path` when that delegates to it.
* The store. Only the driver writes it, one complete unit at a time (store.py). Actors return
  values and hold no state that matters.
* Faults. An actor that dies (process killed, node lost, out of memory) loses only the shard it
  was working on: the pool catches Ray's actor-died errors, starts a replacement in its slot,
  and resubmits the same requests (same seeds) to a live actor, up to `max_retries` times per
  shard. Nothing is counted twice: a unit is committed only once all its shards are back. A
  killed *driver* is the ordinary resume of `pipeline.run` (run the same command again).

Vocabulary backends (docs/architecture.md#the-model-protocol): a student with `backend: vllm`
samples on the actors with
vLLM; everything that needs log-probabilities (the driver's copy and the actors' scoring
models) uses the same checkpoint with `backend: hf` (`scoring_spec`).

Multi-node, with vLLM actors (docs/ray.md has the long version):

    head$    ray start --head --port=6379 --num-gpus=8
    node$    ray start --address=HEAD_IP:6379 --num-gpus=8        # on every other node
    head$    distillscope run configs/boolq-qwen3-0.6b.yaml --out runs/boolq \\
                 --set student.backend=vllm --ray HEAD_IP:6379

distillscope (with the `vllm` extra) must be installed at the same version on every node, and
every node must see the checkpoints. `--ray ''` starts a local single-machine cluster instead.

`ray` is imported only inside functions here: `import distillscope` never needs it, and a
missing Ray gives one line: pip install 'distillscope[ray]'.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillscope.config import ModelSpec, RunConfig
from distillscope.models.base import LanguageModel, ModelError
from distillscope.models.registry import load_model
from distillscope.types import Completion, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.progress import Reporter
    from distillscope.runtime import Runtime
    from distillscope.scoring import PathScores

__all__ = [
    "ModelWorker",
    "RayModel",
    "WorkerLostError",
    "WorkerPool",
    "ray_models",
    "run_on_ray",
    "scoring_spec",
    "spec_key",
    "split_balanced",
]

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


def spec_key(spec: ModelSpec) -> str:
    """The key of a model: the same as the pipeline's model cache key."""
    return spec.model_dump_json()


def scoring_spec(spec: ModelSpec) -> ModelSpec:
    """The spec used for log-probabilities and the tokenizer: a `vllm` model is scored by the
    same checkpoint under `hf` (vLLM exposes no full-vocabulary log-probabilities); options
    the hf backend does not know (vLLM's) are dropped. The same rule as a local vllm model's
    own scorer (`models.vllm.scoring_spec`)."""
    from distillscope.models.vllm import scoring_spec as vllm_scoring_spec

    return vllm_scoring_spec(spec)


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


# ---------------------------------------------------------------------------------------------
# The proxy
class RayModel:
    """A LanguageModel for the driver: sampling (and `score_path`) on the pool's actors; the
    tokenizer from `text` (an hf checkpoint's tokenizer and config, no weights); and
    `logprob_chunks` on a local copy loaded on first use (`scoring_spec`, on `driver_device`
    when given). Other attributes of the local copy (e.g. the toy model's exact values) are
    reachable through the proxy."""

    def __init__(self, spec: ModelSpec, pool: WorkerPool, *,
                 driver_device: str | None = None) -> None:
        self.spec = spec
        self.pool = pool
        self.key = spec_key(spec)
        self.score_key = spec_key(scoring_spec(spec))
        local = scoring_spec(spec)
        if driver_device is not None:
            local = local.model_copy(update={"device": driver_device})
        self._local_spec = local
        self._local_model: LanguageModel | None = None
        self._text: Any = None

    @property
    def local(self) -> LanguageModel:
        if self._local_model is None:
            self._local_model = load_model(self._local_spec)
        return self._local_model

    @property
    def text(self) -> Any:
        """Tokenizer, vocabulary size, EOS and context length: for an hf checkpoint, its
        tokenizer and config only (no weights on the driver unless something there scores);
        otherwise the local copy."""
        if self._local_model is not None:
            return self._local_model
        if self._text is None:
            if self._local_spec.backend == "hf":
                from distillscope.models.hf import load_hf_text

                self._text = load_hf_text(self._local_spec)
            else:
                self._text = self.local
        return self._text

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._local_model is None and self._local_spec.backend == "hf":
            # capability probes (getattr(model, "exact_child_success", None)) must not load
            # the weights: answer from the class before loading an instance
            from distillscope.models.hf import HFModel

            if not hasattr(HFModel, name):
                raise AttributeError(name)
        return getattr(self.local, name)

    # --- protocol: metadata and text, from the local copy -----------------------------------
    @property
    def name(self) -> str:
        return self.text.name

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.text.eos_token_ids

    @property
    def max_context(self) -> int:
        return self.text.max_context

    @property
    def device(self) -> str:
        where = "; ".join(self.pool.where) if self.pool.where else f"{self.pool.size} workers"
        return f"ray({where})"

    def tokenizer_fingerprint(self) -> str:
        return self.text.tokenizer_fingerprint()

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.text.encode_chat(messages)

    def encode(self, text: str) -> list[int]:
        return self.text.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.text.decode(ids)

    # --- protocol: sampling on the actors ---------------------------------------------------
    def sample(
        self, requests: Sequence[SampleRequest], params: SamplingParams
    ) -> list[list[Completion]]:
        requests = list(requests)
        if not requests:
            return []
        ranges = split_balanced([r.n for r in requests], self.pool.size)
        parts = self.pool.map("sample", [(self.key, requests[a:b], params) for a, b in ranges])
        out: list[list[Completion]] = []
        for (a, b), part in zip(ranges, parts, strict=True):
            if len(part) != b - a:
                raise ModelError(f"ray worker returned {len(part)} groups for {b - a} requests")
            out.extend(part)
        return out

    # --- scoring ----------------------------------------------------------------------------
    def logprob_chunks(self, context_ids: Sequence[int], response_ids: Sequence[int],
                       chunk_size: int = 1024):
        return self.local.logprob_chunks(context_ids, response_ids, chunk_size)

    def score_path(self, student_ctx: Sequence[int], teacher: LanguageModel | None,
                   teacher_ctx: Sequence[int] | None, response_ids: Sequence[int],
                   **kwargs: Any) -> PathScores:
        """`scoring.score_path` with this model as the student, run on an actor when the
        teacher is None or a RayModel of the same pool, else on the driver."""
        if teacher is None or (isinstance(teacher, RayModel) and teacher.pool is self.pool):
            teacher_key = teacher.score_key if teacher is not None else None
            return self.pool.call("score_path", self.score_key, list(student_ctx), teacher_key,
                                  None if teacher_ctx is None else list(teacher_ctx),
                                  [int(t) for t in response_ids], kwargs)
        from distillscope.scoring import score_path

        return score_path(self.local, student_ctx, teacher, teacher_ctx, response_ids, **kwargs)


# ---------------------------------------------------------------------------------------------
# The run
def _model_specs(config: RunConfig, out: str | Path) -> list[ModelSpec]:
    """Student first, then every other model the run may load: external teachers (those of a
    run being resumed too), demonstration sources and the summariser."""
    from distillscope.store import RunStore, StoreError

    teachers = list(config.teachers)
    store = RunStore(out)
    if store.exists():
        with contextlib.suppress(StoreError):  # pipeline.run reports it
            teachers += store.load_config().teachers
    specs = {spec_key(config.student): config.student}
    others = [t.model if t.mode == "external" else None for t in teachers]
    others += [t.source for t in teachers] + [config.context.summarizer]
    for spec in others:
        if spec is not None:
            specs.setdefault(spec_key(spec), spec)
    return list(specs.values())


def ray_models(specs: Sequence[ModelSpec], pool: WorkerPool, *,
               driver_device: str | None = None) -> dict[str, LanguageModel]:
    """The pipeline's model cache (keyed like `runtime.model_cache_key`) filled with
    proxies on `pool`."""
    return {spec_key(s): RayModel(s, pool, driver_device=driver_device) for s in specs}


def _cluster_size(num_workers: int | None, gpus_per_worker: float | None) -> tuple[int, float]:
    ray = _import_ray()
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= 1 else 0.0
    if num_workers is None:
        slots = gpus / gpus_per_worker if gpus_per_worker > 0 else float(res.get("CPU", 1))
        num_workers = max(1, int(slots))
    return num_workers, gpus_per_worker


def run_on_ray(
    config: RunConfig,
    out: str | Path,
    *,
    address: str | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    score: bool = True,
    num_workers: int | None = None,
    gpus_per_worker: float | None = None,
    driver_device: str | None = None,
    max_retries: int = 3,
    on_dispatch: Callable[[WorkerPool], None] | None = None,
) -> Runtime:
    """`pipeline.run` with the models on Ray actors; the driver (this process) writes the store.

    `address`: an existing cluster ("HOST:PORT" or "auto"); None starts a local one, unless
    Ray is already initialised in this process (then that cluster is used and left running).
    `num_workers` defaults to one actor per GPU of the cluster (`gpus_per_worker`, default 1
    when the cluster has GPUs), or one per CPU on a CPU-only cluster. `driver_device` places
    the driver's local model copy (tokenizer, `logprob_chunks`), e.g. "cpu" when every GPU
    holds an actor. A killed run resumes like `pipeline.run`: call again with the same `out`.
    """
    ray = _import_ray()
    from distillscope import pipeline
    from distillscope.progress import NullReporter

    reporter = reporter or NullReporter()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
        started = True
    try:
        n, gpus = _cluster_size(num_workers, gpus_per_worker)
        specs = _model_specs(config, out)
        pool = WorkerPool(n, num_gpus=gpus, num_cpus=1, preload=[spec_key(specs[0])],
                          max_retries=max_retries, on_dispatch=on_dispatch)
        try:
            reporter.log(f"ray: starting {n} worker(s) ({gpus:g} GPU each)")
            where = pool.start()
            reporter.log("ray: workers at " + ", ".join(where))
            models = ray_models(specs, pool, driver_device=driver_device)
            return pipeline.run(config, out, reporter=reporter, force=force, models=models,
                                score=score)
        finally:
            stats = dict(pool.stats)
            pool.shutdown()
            if stats["replaced"]:
                reporter.log(f"ray: {stats['replaced']} worker(s) replaced, "
                             f"{stats['resubmitted']} shard(s) resubmitted")
    finally:
        if started:
            ray.shutdown()

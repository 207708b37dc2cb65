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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillscope.config import ModelSpec, RunConfig
from distillscope.models.base import LanguageModel, ModelError
from distillscope.models.registry import load_model
from distillscope.raypool import (  # noqa: F401  (re-exported)
    RAY_MISSING,
    ModelWorker,
    WorkerLostError,
    WorkerPool,
    _import_ray,
    _retriable_errors,
    split_balanced,
)
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

"""The run configuration: pydantic models, every field documented, validated once.

A YAML file (or the CLI's small surface) fills a `RunConfig`; library code never reads argv or
the environment. Defaults are the paper's values (section 2.5 and appendix E.9) except where
docs/method.md#where-we-depart-from-the-paper fixes a convention (`estimator: unbiased`, `restrict:
renorm`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

TeacherMode = Literal[
    "external", "self-1c", "self-1c1w", "self-3c", "self-sum-1c", "self-sum-1c1w", "self-1c-src"
]
TEACHER_MODES: tuple[str, ...] = TeacherMode.__args__  # type: ignore[attr-defined]
TaskName = Literal["boolq", "mmlu", "aime2024", "aime2025", "custom", "quickstart", "toy"]


class ConfigError(ValueError):
    """A configuration problem, with a message that names the field and the allowed values."""


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("Input should be a number, not a boolean")
    return v


# Counts are strict integers (YAML `G: true` or `G: 2.5` is an error, not 1 or 2); numbers
# accept ints and floats, but not booleans, NaN or infinity.
Int = StrictInt
Bool = StrictBool  # true/false only: "yes", 1 or "on" given as a value are refused
Num = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]

# A teacher's name becomes part of file names and unit keys, and is a column value next to
# "student" and the report's "all": one safe rule, checked once, when the config is read.
TEACHER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,63}$")
RESERVED_NAMES = ("all", "student", "none")
TEACHER_NAME_RULE = ("1-64 characters: letters, digits and . _ + = - (starting with a letter or "
                     "digit; no spaces, '/' or '__'); not " + ", ".join(RESERVED_NAMES))


def check_teacher_name(name: str) -> str:
    """`name` if it is a valid teacher name, else ValueError with the rule."""
    if (not isinstance(name, str) or not TEACHER_NAME_RE.match(name) or "__" in name
            or name.lower() in RESERVED_NAMES):
        raise ValueError(f"teacher name {name!r} is not allowed: use {TEACHER_NAME_RULE}")
    return name


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
class ModelSpec(_Strict):
    """Where a model comes from and how to run it."""

    backend: Literal["hf", "vllm", "toy", "openai"] = "hf"
    model: str = Field(
        "embedded:smollm2-135m",
        description="HF model id, local path, or 'embedded:smollm2-135m' (the bundled GGUF).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N (or mps).")
    trust_remote_code: Bool = Field(False, description="Run code shipped with the checkpoint.")
    enable_thinking: Bool = Field(True, description="Qwen3 chat templates: thinking mode.")
    system_prompt: str | None = Field(
        "You are a helpful assistant.", description="System message; null for none."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (toy: tilt, strength, ...)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"unknown device {v!r}: use auto, cpu, cuda, cuda:N or mps")
        return v

    @model_validator(mode="after")
    def _option_names(self) -> ModelSpec:
        # names only (models/options.py, no backend imported); the loader checks the values
        from distillscope.models.options import unknown_options

        if (msg := unknown_options(self.backend, self.options)) is not None:
            raise ValueError(msg)
        return self


class TeacherSpec(_Strict):
    """One teacher configuration (section 3 of the paper)."""

    name: str = Field(description="Label used in tables and reports.")
    mode: TeacherMode = "self-1c"
    model: ModelSpec | None = Field(
        None, description="external: the teacher model. self-*: null (the student itself)."
    )
    source: ModelSpec | None = Field(
        None, description="self-1c-src: the model that writes the demonstration."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_teacher_name(v)

    @model_validator(mode="after")
    def _check(self) -> TeacherSpec:
        if self.mode == "external" and self.model is None:
            raise ValueError(f"teacher '{self.name}': mode 'external' needs a 'model'")
        if self.mode == "self-1c-src" and self.source is None:
            raise ValueError(f"teacher '{self.name}': mode 'self-1c-src' needs a 'source' model")
        return self


class TaskSpec(_Strict):
    name: TaskName = "quickstart"
    path: str | None = Field(None, description="Local JSONL/Parquet file instead of the hub.")
    split: str | None = Field(None, description="Dataset split (hub loaders).")
    limit: Int | None = Field(None, ge=1, description="Use at most this many questions.")
    offset: Int = Field(0, ge=0, description="Skip this many questions first.")
    ids: list[str] | None = Field(None, description="Use only these question ids.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="custom: field names (id, question, answer, ...)."
    )
    verifier: str | None = Field(None, description="custom: yesno, letter, integer or math.")
    options: dict[str, Any] = Field(default_factory=dict, description="Task-specific options.")


class SamplingConfig(_Strict):
    temperature: Num = Field(1.0, gt=0)
    top_p: Num = Field(1.0, gt=0, le=1)
    max_new_tokens: Int = Field(512, ge=1, le=1 << 20,
                                description="Longest response in tokens (at most 2^20).")
    stop_strings: list[str] = Field(default_factory=list)
    batch_groups: Int = Field(8, ge=1, description=(
        "Sampling groups batched per model call. Targeted rollouts are allocated one call at a "
        "time from the tree so far, so this also changes which rollouts a run draws."))

    @field_validator("temperature", "top_p")
    @classmethod
    def _plain_softmax(cls, v: float, info: Any) -> float:
        # every gradient takes P_theta to be the distribution the tree's rollouts were drawn from,
        # the student's temperature-1, untruncated softmax (docs/method.md#the-generation-tree)
        if v != 1.0:
            raise ValueError(
                f"must be 1.0 (got {v}): the tree's rollouts must be drawn from the distribution "
                f"every gradient uses as P_theta, the student's plain softmax; a tempered or "
                f"top-p-truncated sampler would make the ideal and Dr. GRPO gradients inconsistent "
                f"with the sampled tree"
            )
        return v


class ContextConfig(_Strict):
    """Phase 0: demonstrations and summaries for self-* teachers (appendix E.9)."""

    demo_temperature: Num = Field(0.7, gt=0)
    max_trials: Int = Field(60, ge=1, description="Demo samples per question before giving up.")
    demo_max_new_tokens: Int | None = Field(None, ge=1,
                                            description="Default: sampling.max_new_tokens.")
    summarizer: ModelSpec | None = Field(None, description="Summariser; null = the student.")
    missing_demos: Literal["paper", "exclude_question", "skip_teacher"] = Field(
        "paper",
        description="A question where a self-* teacher lacks its demonstrations after "
        "max_trials. paper (default) = keep the question when every demonstration source has a "
        "correct demonstration (the paper's filter) and skip, on that question only, a teacher "
        "whose extra demos (a wrong one, three correct, summaries) are missing; "
        "exclude_question = leave it out for every teacher when any teacher lacks its demos; "
        "skip_teacher = keep every question, score the teachers that have a context there.",
    )


class ScreenConfig(_Strict):
    G: Int = Field(32, ge=1, description="Rollouts per question and variant.")
    temperature: Num = Field(1.0, gt=0)
    require_all_sources: Bool = Field(True, description="Intersection filter (table 7).")
    select: list[Literal["easy", "medium", "hard"]] | None = Field(
        None, description="run: screen first and analyse only the questions in these difficulty "
        "bins (of the student's baseline pass rate); null = analyse every question.",
    )


class TreeConfig(_Strict):
    """Phase 1: the shared generation tree and targeted rollouts (section 2.5, appendix D)."""

    G: Int = Field(200, ge=1, description="Initial rollouts per question.")
    n_correct_paths: Int = Field(2, ge=0)
    n_incorrect_paths: Int = Field(2, ge=0)
    tau: Num = Field(0.02, gt=0, lt=1, description="Candidate threshold on P_student/P_teacher.")
    top_k: Int = Field(8, ge=0, description="Per window: candidates ranked by |gkd gradient|.")
    top_r: Int = Field(8, ge=0, description="Per window: candidates ranked by |P_te - P_theta|.")
    n_min: Int = Field(100, ge=1, description="Counted visits each chosen child is enriched to.")
    n_sig: Int = Field(20, ge=1, description="Visits for a child to enter S_u.")
    window_base: Int = Field(50, ge=1, description="Windows [0,b), [b,3b), [3b,7b), ...")
    estimator: Literal["unbiased", "paper"] = Field(
        "unbiased", description="unbiased (default) or paper (the paper's naive cascade counting, "
        "biased; for comparison). docs/method.md#estimators",
    )
    budget: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed = enrich to n_min (paper); adaptive = rounds to where it pays."
    )
    adaptive_round: Int = Field(20, ge=1, description="adaptive: rollouts per child per round.")
    adaptive_gain: Num = Field(
        1e-4, ge=0,
        description="adaptive: a child gets another round only while it is expected to cut its "
        "node's squared alignment error (mean over teachers, times the paths reporting the "
        "node) by at least this much per rollout.",
    )
    adaptive_ci: Num = Field(
        0.05, ge=0, description="adaptive: a node stops once the 95% bootstrap half-width of "
        "its alignment (widest teacher) is at most this.",
    )
    adaptive_max_child: Int | None = Field(
        None, ge=1, description="adaptive: cap on a child's visits; null = 2 * n_min."
    )
    group_size: Int = Field(100, ge=1, description="Max samples per targeted-rollout group.")
    exclude_extremely_hard: Bool = Field(True, description="Skip questions with pass rate 0.")

    @field_validator("estimator", mode="before")
    @classmethod
    def _no_backup(cls, v: Any) -> Any:
        if v == "backup":
            raise ValueError(
                "'backup' is not offered: on the synthetic world it gave no lower alignment error "
                "than 'unbiased' for the same rollouts (benchmarks/RESULTS.md); use 'unbiased'"
            )
        return v


class ScoringConfig(_Strict):
    restrict: Literal["renorm", "project"] = "renorm"
    topk_overlap: Int = Field(16, ge=1, description="k of the top-k overlap features.")
    chunk_size: Int = Field(512, ge=1, description="Positions per scoring chunk on device.")


class RunConfig(_Strict):
    name: str = "run"
    seed: Int = 0
    student: ModelSpec = Field(default_factory=ModelSpec)
    teachers: list[TeacherSpec] = Field(default_factory=list)
    task: TaskSpec = Field(default_factory=TaskSpec)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    screen: ScreenConfig = Field(default_factory=ScreenConfig)
    tree: TreeConfig = Field(default_factory=TreeConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @field_validator("teachers")
    @classmethod
    def _unique_teachers(cls, teachers: list[TeacherSpec]) -> list[TeacherSpec]:
        names = [t.name for t in teachers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"teacher names must be unique; repeated: {sorted(dup)}")
        folded = [n.lower() for n in names]
        dup = {n for n in names if folded.count(n.lower()) > 1}
        if dup:  # one file on a case-insensitive file system
            raise ValueError("teacher names must differ in more than letter case: "
                             + ", ".join(sorted(dup)))
        return teachers

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self, *, exclude: tuple[str, ...] = ("teachers", "name")) -> str:
        """Hash of everything that determines the shared tree. Adding a teacher later
        (`distillscope score`) must not change it."""
        data = self.model_dump(mode="json")
        for key in exclude:
            data.pop(key, None)
        # fields added after run directories existed count only when set away from their
        # default, so the fingerprint those runs recorded (provenance, Parquet metadata) stays
        # the one this code computes for them
        for section, key, default in _LATER_FIELDS:
            if data.get(section, {}).get(key, default) == default:
                data.get(section, {}).pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_LATER_FIELDS = (("context", "missing_demos", "paper"), ("screen", "select", None))


# ---------------------------------------------------------------------------------------------
def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"config field '{loc}': {msg}")
    return "; ".join(lines)


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: invalid configuration: {_format_error(err)}") from None


def flat_fields(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"dotted.key": leaf value}."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flat_fields(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """The dotted fields in which `new` differs from `old`, teachers and name left out (what
    a run's fingerprint covers, and a little more)."""
    a, b = (flat_fields(c.model_dump(mode="json", exclude={"teachers", "name"}))
            for c in (old, new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (plain YAML keeps the
    last one silently: `seed: 0` ... `seed: 5` would run seed 5). Merge keys (<<) still work."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base loader refuses an unhashable key with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _safe_load_unique(text: str) -> Any:
    """yaml.safe_load, refusing a key given twice (`_UniqueKeyLoader`)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML file (safe_load only) and validate it. `overrides` are dotted keys."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory: give a YAML file (presets in "
                          "configs/)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _safe_load_unique(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})"
                          ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the file ({err.strerror})") from None
    if data is None:
        raise ConfigError(f"{path}: the configuration file is empty (see configs/ for presets)")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_config(data, str(path))


def _set_dotted(data: Any, key: str, value: Any) -> None:
    """data[a][b]...[leaf] = value for key "a.b...leaf": mappings are created on the way, a
    list is entered by an integer index ("teachers.0.name"); anything else is an error."""
    node = data
    parts = key.split(".")
    if not key.strip() or any(not p.strip() for p in parts):
        raise ConfigError(f"override '{key}={value!r}': the key is empty or has an empty part; "
                          "give a dotted field name, e.g. tree.G=50")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        elif isinstance(node, list):
            if not (re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node)):
                raise ConfigError(
                    f"override '{key}': '{where}' must be an index of the list of "
                    f"{len(node)} item(s) above it"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            above = ".".join(parts[:i])
            raise ConfigError(
                f"override '{key}': '{above}' holds {node!r}, not a mapping or a list"
            )

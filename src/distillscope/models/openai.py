"""The `openai` backend: a teacher served over HTTP (an OpenAI-compatible `/v1/completions`,
e.g. `vllm serve` / `python -m vllm.entrypoints.openai.api_server`), read through
`echo` + `prompt_logprobs=k`.

What the server returns (vLLM 0.32, `completion/protocol.py`): with `return_token_ids` a
choice carries `prompt_token_ids` (checked against what we sent) and `prompt_logprobs`, one
entry per prompt token: None for the first, else {"<id>": {"logprob", "rank",
"decoded_token"}} holding the top-k ids *and* the prompt token itself (rank > k when it is
outside them). A k above the server's `--max-logprobs` (default 20) is a 400 "greater than
max allowed", turned into a `ModelError` naming the fix. vLLM 0.32's `logprob_token_ids` is
applied to *generated* positions only (its `prompt_logprob_token_ids` is not exposed over
HTTP), so exact values at chosen ids of a path are not available from it; the start-up probe
records whether the server accepts the field (`self.info`), and the rows use top-k only.

Rows: `models.topk.fill_rows`, the same rule the benchmark applies (revealed ids exact, the
rest a tail bucket capped at the k-th log-probability); `revealed_ids[tuple(response)]` says
which ids were exact at each position (a `topk.RevealedCache`: the most recent responses only).
Teacher only: `sample` raises. Tokenizer side: the local tokenizer of `spec.model` (hf
`load_hf_text`); the self-test checks that the server maps a chat prompt to the same ids, and
that two identical requests agree within `replica_tol` (replicas that disagree are reported,
not averaged). A failed check is a `ModelError`; a passed one leaves its record in
`self_test_result` (None when `self_test: false`), which the run writes to provenance.json
under `teachers/<name>/self_test`. Standard library HTTP (urllib).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from distillscope.models.base import ModelError
from distillscope.models.options import OPTIONS_BY_BACKEND, unknown_options
from distillscope.models.topk import RevealedCache, fill_rows

if TYPE_CHECKING:
    from distillscope.config import ModelSpec

OPTIONS = OPTIONS_BY_BACKEND["openai"]  # the names are checked with the configuration

PROBE = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]


class OpenAIModel:
    """A `LanguageModel` (scoring only) whose log-probabilities come from a server."""

    def __init__(self, text: Any, base_url: str, served_model: str, *, topk: int = 20,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5,
                 replica_tol: float = 1e-4) -> None:
        self.text = text
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.k = int(topk)
        if self.k < 1:
            raise ModelError(f"openai backend: topk must be >= 1, got {topk}")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.replica_tol = float(replica_tol)
        self.name = f"openai:{served_model}@{self.base_url}/top{self.k}"
        self.revealed_ids = RevealedCache()
        self.info: dict[str, Any] = {"topk": self.k, "base_url": self.base_url}
        self.self_test_result: dict[str, Any] | None = None  # set by a passed self_test()

    # --- identity and text: the local tokenizer ------------------------------------------------
    def __getattr__(self, attr: str) -> Any:
        if attr == "text":
            raise AttributeError(attr)
        return getattr(self.text, attr)

    @property
    def vocab_size(self) -> int:
        return int(self.text.vocab_size)

    @property
    def device(self) -> str:
        return "cpu"

    def sample(self, requests, params):  # noqa: ANN001 - protocol signature
        raise ModelError("the openai backend is a teacher (scoring only); sample with the "
                         "student's backend")

    # --- HTTP -------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.base_url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as err:
                msg = err.read().decode(errors="replace")[:500]
                if err.code == 429 or err.code >= 500:
                    last = ModelError(f"{path}: HTTP {err.code}: {msg}")
                else:
                    if "max allowed" in msg or "max_logprobs" in msg:
                        raise ModelError(
                            f"the server at {self.base_url} caps logprobs below k={self.k}: "
                            f"{msg} (start it with --max-logprobs >= {self.k} or lower the "
                            f"backend option topk)") from None
                    raise ModelError(f"{self.base_url}{path}: HTTP {err.code}: {msg}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = ModelError(f"{self.base_url}{path}: {err}")
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise ModelError(f"giving up after {self.retries + 1} attempts: {last}")

    def prompt_logprobs(self, ids: Sequence[int]) -> list[dict[int, tuple[float, int | None]]]:
        """Per prompt position: {id: (logprob, rank)} (position 0 is empty)."""
        ids = [int(x) for x in ids]
        out = self._post("/v1/completions", {
            "model": self.served_model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
            "echo": True, "prompt_logprobs": self.k, "return_token_ids": True})
        try:
            choice = out["choices"][0]
            entries = choice["prompt_logprobs"]
        except (KeyError, IndexError, TypeError) as err:
            raise ModelError(f"the server's answer has no prompt_logprobs ({err}): is it an "
                             f"OpenAI-compatible vLLM server?") from None
        got = choice.get("prompt_token_ids")
        if got is not None and [int(x) for x in got] != ids:
            raise ModelError("the server re-tokenised the prompt ids it was sent "
                             f"({len(got)} ids back for {len(ids)})")
        if entries is None or len(entries) != len(ids):
            raise ModelError(f"prompt_logprobs has {0 if entries is None else len(entries)} "
                             f"entries for a {len(ids)}-token prompt")
        res = []
        for e in entries:
            d = {}
            for key, v in (e or {}).items():
                if isinstance(v, dict):
                    d[int(key)] = (float(v["logprob"]), v.get("rank"))
                else:
                    d[int(key)] = (float(v), None)
            res.append(d)
        return res

    # --- scoring ----------------------------------------------------------------------------
    def logprob_chunks(self, context_ids: Sequence[int], response_ids: Sequence[int],
                       chunk_size: int = 1024) -> Iterator[torch.Tensor]:
        ctx, resp = [int(x) for x in context_ids], [int(x) for x in response_ids]
        if not ctx:
            raise ModelError("the openai backend needs a non-empty context")
        entries = self.prompt_logprobs(ctx + resp)[len(ctx):]
        V = self.vocab_size
        width = self.k + 1
        T = len(resp)
        ids = torch.zeros((T, width), dtype=torch.int64)
        lp = torch.zeros((T, width), dtype=torch.float64)
        valid = torch.zeros((T, width), dtype=torch.bool)
        kth = torch.zeros(T, dtype=torch.float64)
        for t, d in enumerate(entries):
            if resp[t] not in d:
                raise ModelError(f"position {t}: the server did not return the prompt token")
            ranked = sorted(d.items(), key=lambda kv: -kv[1][0])
            top = [kv for kv in ranked if kv[1][1] is None or kv[1][1] <= self.k][: self.k]
            if len(top) < min(self.k, V) and len(d) < min(self.k, V):
                raise ModelError(f"the server returned {len(d)} log-probabilities at position "
                                 f"{t}, fewer than k={self.k}: it caps k (--max-logprobs)")
            kth[t] = min(v[0] for _, v in top)
            items = list(d.items())[:width]
            for j, (tok, (v, _)) in enumerate(items):
                ids[t, j], lp[t, j], valid[t, j] = tok, v, True
        rows = fill_rows(V, ids, lp, valid, kth)
        self.revealed_ids[tuple(resp)] = [
            frozenset(rows.revealed[t].nonzero().flatten().tolist()) for t in range(T)]
        for s in range(0, T, max(1, int(chunk_size))):
            yield rows.logp[s:s + chunk_size].to(torch.float32)

    # --- start-up self-test -----------------------------------------------------------------
    def self_test(self) -> dict[str, Any]:
        """Tokenizer, determinism and `logprob_token_ids` probes; the record of a pass (also
        kept as `self_test_result`), or a `ModelError` naming the failed check."""
        t0 = time.perf_counter()
        ids = self.text.encode_chat(PROBE)
        try:
            tok = self._post("/tokenize", {"model": self.served_model,
                                           "prompt": self.text.decode(ids),
                                           "add_special_tokens": False})
            server_ids = [int(x) for x in tok["tokens"]]
        except (ModelError, KeyError, TypeError) as err:
            raise ModelError(f"self-test: the server's /tokenize failed: {err}") from None
        if server_ids != list(ids):
            raise ModelError("self-test: the server's tokenizer maps the probe prompt to other "
                             f"ids ({server_ids[:8]}... vs {list(ids)[:8]}...): a different "
                             f"model or tokenizer is served")
        a, b = self.prompt_logprobs(ids), self.prompt_logprobs(ids)
        worst = 0.0
        for da, db in zip(a, b, strict=True):
            for tid in set(da) & set(db):
                worst = max(worst, abs(da[tid][0] - db[tid][0]))
        if worst > self.replica_tol:
            raise ModelError(f"self-test: two identical requests differ by {worst:.3g} in "
                             f"log-probability (> replica_tol {self.replica_tol}): replicas "
                             f"behind {self.base_url} disagree; not averaging them")
        self.info["replica_max_diff"] = worst
        try:
            self._post("/v1/completions", {"model": self.served_model, "prompt": ids,
                                           "max_tokens": 1, "logprobs": 1,
                                           "logprob_token_ids": [int(ids[0])]})
            self.info["logprob_token_ids"] = "accepted (generated positions only)"
        except ModelError as err:
            self.info["logprob_token_ids"] = f"not accepted: {str(err)[:120]}"
        self.self_test_result = {
            "passed": True, "served_model": self.served_model, **self.info,
            "tokenizer": f"same ids as the local tokenizer ({len(ids)}-token probe prompt)",
            "replica_tol": self.replica_tol,
            "determinism": f"two identical requests: max |d log p| {worst:.3g} "
                           f"<= replica_tol {self.replica_tol:g}",
            "seconds": round(time.perf_counter() - t0, 3)}
        return self.self_test_result


def load_openai_model(spec: ModelSpec) -> OpenAIModel:
    opts = dict(spec.options)
    if (msg := unknown_options("openai", opts)) is not None:
        raise ModelError(msg)
    if not opts.get("base_url"):
        raise ModelError("the openai backend needs options.base_url (e.g. http://127.0.0.1:8000)")
    from distillscope.models.hf import load_hf_text

    hf_opts = {k: v for k, v in opts.items() if k == "cache_dir"}
    text = load_hf_text(spec.model_copy(update={"backend": "hf", "options": hf_opts}))
    model = OpenAIModel(text, str(opts["base_url"]), str(opts.get("served_model", spec.model)),
                        topk=int(opts.get("topk", 20)), timeout=float(opts.get("timeout", 120)),
                        retries=int(opts.get("retries", 3)),
                        backoff=float(opts.get("backoff", 0.5)),
                        replica_tol=float(opts.get("replica_tol", 1e-4)))
    if bool(opts.get("self_test", True)):
        model.self_test()
    return model

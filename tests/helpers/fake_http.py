"""A JSON-over-HTTP server on 127.0.0.1 in a thread, for the fake OpenAI-compatible servers of
tests/unit/test_openai.py and tests/integration/test_openai_toy.py, and the prompt_logprobs
entry they both answer with (vLLM 0.32's shape: {"id": {logprob, rank, decoded_token}}).
tests/helpers is on pytest's pythonpath (pyproject.toml); tests/ itself is not, because the
folder tests/vllm would then shadow the vllm package."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

Answer = Callable[[str, dict], tuple[int, dict]]  # (path, body) -> (status, JSON body)


class JSONServer:
    """POSTs answered by `answer`; `url` to reach it, `shutdown()` to stop it."""

    def __init__(self, answer: Answer):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, out = answer(self.path, body)
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        self.httpd.shutdown()


def logprob_entry(lp: torch.Tensor, token: int, k: int) -> dict:
    """One position's prompt_logprobs entry: the top-k of `lp` and the prompt token itself."""
    order = torch.argsort(lp, descending=True).tolist()
    e = {str(t): {"logprob": float(lp[t]), "rank": r + 1, "decoded_token": "x"}
         for r, t in enumerate(order[:k])}
    e[str(token)] = {"logprob": float(lp[token]), "rank": order.index(token) + 1,
                     "decoded_token": "x"}
    return e

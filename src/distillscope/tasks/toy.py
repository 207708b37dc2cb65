"""The toy task: questions that are synthetic worlds of the `toy` model backend
(docs/method.md#the-synthetic-world).

Question i has prompt "toy:<i>" (what the toy model's `encode_chat` looks for) and, as answer,
the world's index and parameters, so the verifier rebuilds exactly the world the model samples
from. The task's options are `n_questions` (default 8) plus the world options of
`distillscope.models.toy.WorldParams` (seed, n_states, vocab, synonyms, commit, max_len), which
must equal the toy model's (the defaults agree).

Verification re-parses the response text (token names separated by spaces, as the toy model's
`decode` writes them) and runs the world's automaton: reward 1 iff the response ends in an
accepting state. The text must be the whole response, forced prefix included. The end of the text
ends the response whether or not "<eos>" is written (the pipeline decodes without EOS, like
skip_special_tokens); words after a written "<eos>" are ignored. A word that is not a
response-token name, or more than max_len - 1 tokens before the end, makes the response
unparsable (reward 0): the world never produces it. So a response truncated by max_new_tokens
would be graded as if it had stopped there; sample with max_new_tokens >= max_len (the world ends
every response by then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distillscope.models.toy import ToyWorld, Vocab, WorldParams
from distillscope.tasks.base import TaskError, select
from distillscope.types import Question, Verdict

if TYPE_CHECKING:
    from distillscope.config import TaskSpec

_TASK_KEYS = {"n_questions"}


class ToyTask:
    name = "toy"

    def __init__(self) -> None:
        self._worlds: dict[tuple[int, WorldParams], ToyWorld] = {}

    def load(self, spec: TaskSpec) -> list[Question]:
        opts = dict(spec.options)
        fields = set(WorldParams.__dataclass_fields__)
        unknown = set(opts) - _TASK_KEYS - fields
        if unknown:
            raise TaskError(
                f"task 'toy': unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(_TASK_KEYS | fields)}"
            )
        for k, v in opts.items():
            if k != "commit" and (isinstance(v, bool) or not isinstance(v, int)):
                raise TaskError(f"task 'toy': option '{k}' must be an integer, got {v!r}")
        if isinstance(opts.get("commit", 0.0), bool) or not isinstance(
                opts.get("commit", 0.0), (int, float)):
            raise TaskError(f"task 'toy': option 'commit' must be a number, got "
                            f"{opts['commit']!r}")
        n = opts.get("n_questions", 8)
        if n < 1:
            raise TaskError("task 'toy': option 'n_questions' must be >= 1")
        try:
            params = WorldParams.from_options(opts)
        except (TypeError, ValueError) as err:
            raise TaskError(f"task 'toy': {err}") from None
        questions = []
        for i in range(n):
            world = self._world(i, params)
            answer = {"world": i, "params": params.to_dict()}
            meta = {"exact_pass_rate": world.start_value}
            questions.append(Question(qid=f"toy-{i}", prompt=f"toy:{i}", answer=answer, meta=meta))
        return select(questions, spec)

    def user_message(self, question: Question) -> str:
        return question.prompt

    def verify(self, question: Question, text: str) -> Verdict:
        try:
            index = int(question.answer["world"])
            params = WorldParams(**question.answer["params"])
        except (KeyError, TypeError, ValueError) as err:
            raise TaskError(
                f"task 'toy': question '{question.qid}' has a bad answer: {err}"
            ) from None
        vocab = Vocab(params.vocab)
        ids = []
        for word in text.split():
            tok = vocab.ids.get(word)
            if tok is None or tok >= vocab.n_response:
                return Verdict(0.0, False, None)
            ids.append(tok)
            if tok == vocab.eos:
                break
        if not ids or ids[-1] != vocab.eos:
            ids.append(vocab.eos)  # the text ends the response (decoders drop EOS)
        if len(ids) > params.max_len:
            return Verdict(0.0, False, None)  # no response of the world is this long
        reward = self._world(index, params).reward(ids)
        return Verdict(reward, True, " ".join(vocab.names[i] for i in ids[:-1]))

    def _world(self, index: int, params: WorldParams) -> ToyWorld:
        key = (index, params)
        if key not in self._worlds:
            if index < 0:
                raise TaskError(f"task 'toy': world index {index} < 0")
            self._worlds[key] = ToyWorld(index, params)
        return self._worlds[key]

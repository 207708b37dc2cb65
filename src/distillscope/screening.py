"""Screening (phase 0, appendix E.9, tables 7-9): how much does each teacher context help?

Per question and context variant, the pass rate of the student from G rollouts at tau = 1.0
(ScreenConfig), the student's own prompt for `baseline` and the teacher's user message
(`contexts.py`) for each self-* teacher. Then:

* difficulty bins from the baseline pass rate p: easy p >= .8, medium .25 <= p < .8,
  hard 0 < p < .25, extremely_hard p = 0 (excluded from the analysis);
* the intersection filter (ScreenConfig.require_all_sources): keep questions with at least one
  correct demo under every demo source in use (the student, and each self-1c-src source);
* table 7: questions with a correct demo per source and in the intersection;
* table 8: accuracy per variant and its delta against the baseline;
* table 9: accuracy and n per difficulty bin and variant.

Departures from the paper, all in the direction of saying more:
* A variant whose own demos are missing for a question (self-1c1w needs a wrong demo, which an
  always-right student may never write in max_trials) is not screened on it
  (`available` = False); tables 8-9 report each variant's n, and table 8's delta compares it
  with the baseline on the same questions.
* Variants are screened only on the analysis questions (intersection, not extremely hard):
  that is where tables 8-9 look, and it saves G rollouts per excluded question and variant.
* `external` teachers are another model on the student's prompt, not a context: they are not
  screened (listed in `ScreenResult.skipped`).

Accuracies in the tables are percentages (as in the paper); pass rates in `screen` are
fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from distillscope.contexts import (
    STUDENT_SOURCE,
    DemoBank,
    DemoStatus,
    DemoUnavailable,
    Progress,
    chat,
    requirements,
    source_name,
    stable_seed,
)
from distillscope.types import Question, SampleRequest, SamplingParams

if TYPE_CHECKING:
    from distillscope.config import RunConfig, TeacherSpec
    from distillscope.models.base import LanguageModel
    from distillscope.tasks.base import Task

BASELINE = "baseline"
BINS = ("hard", "medium", "easy")
EXTREMELY_HARD = "extremely_hard"


def difficulty(pass_rate: float) -> str:
    """Bin of a baseline pass rate (appendix E.9)."""
    if pass_rate >= 0.8:
        return "easy"
    if pass_rate >= 0.25:
        return "medium"
    if pass_rate > 0:
        return "hard"
    return EXTREMELY_HARD


# ---------------------------------------------------------------------------------------------
# Pass rates


def pass_rates(
    model: LanguageModel,
    task: Task,
    questions: Sequence[Question],
    user_messages: Mapping[str, str],
    params: SamplingParams,
    *,
    G: int,
    seed: int,
    variant: str,
    system_prompt: str | None = None,
    groups_per_call: int = 8,
    progress: Progress | None = None,
) -> dict[str, tuple[int, int]]:
    """(n, n_correct) per question id, for the questions that have a user message. One
    SampleRequest of G samples per question, `groups_per_call` requests per model call; the
    seed of a question's group is derived from (seed, variant, qid)."""
    todo = [q for q in questions if q.qid in user_messages]
    out: dict[str, tuple[int, int]] = {}
    for lo in range(0, len(todo), groups_per_call):
        chunk = todo[lo : lo + groups_per_call]
        reqs = [
            SampleRequest(
                tuple(model.encode_chat(chat(user_messages[q.qid], system_prompt))),
                G,
                stable_seed(seed, "screen", variant, q.qid),
            )
            for q in chunk
        ]
        for q, comps in zip(chunk, model.sample(reqs, params), strict=True):
            n_correct = sum(int(task.verify(q, c.text).reward >= 1.0) for c in comps)
            out[q.qid] = (len(comps), n_correct)
        if progress is not None:
            progress(f"screen {variant}", len(out), len(todo))
    return out


# ---------------------------------------------------------------------------------------------
# Tables (pure functions of the screen table)


def _pct(x: float) -> float:
    return round(100.0 * x, 1) if not math.isnan(x) else math.nan


def analysis_questions(
    screen: pd.DataFrame, correct_demo: Mapping[str, set[str]], require_all_sources: bool
) -> list[str]:
    """Question ids with baseline pass rate > 0 and (when required) a correct demo under every
    source in `correct_demo` (source -> qids with one)."""
    base = screen[screen["variant"] == BASELINE]
    keep = [qid for qid, p in zip(base["qid"], base["pass_rate"], strict=True) if p > 0]
    if require_all_sources:
        keep = [qid for qid in keep if all(qid in s for s in correct_demo.values())]
    return keep


def table7(qids: Sequence[str], correct_demo: Mapping[str, set[str]]) -> pd.DataFrame:
    """Questions with at least one correct demo, per source, and the intersection."""
    rows = [
        {"source": src, "n_questions": len(qids),
         "with_correct_demo": sum(q in have for q in qids)}
        for src, have in correct_demo.items()
    ]
    both = [q for q in qids if all(q in have for have in correct_demo.values())]
    rows.append({"source": "all sources", "n_questions": len(qids),
                 "with_correct_demo": len(both)})
    return pd.DataFrame(rows, columns=["source", "n_questions", "with_correct_demo"])


def _rates(screen: pd.DataFrame, variant: str, qids: Sequence[str]) -> dict[str, float]:
    s = screen[(screen["variant"] == variant) & screen["available"] & (screen["n"] > 0)]
    wanted = set(qids)
    return {q: p for q, p in zip(s["qid"], s["pass_rate"], strict=True) if q in wanted}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def table8(screen: pd.DataFrame, qids: Sequence[str], variants: Sequence[str]) -> pd.DataFrame:
    """Accuracy (mean pass rate, %) per variant over `qids`, and the delta against the baseline
    on the same questions (the questions where the variant is available)."""
    base = _rates(screen, BASELINE, qids)
    rows = [{"variant": BASELINE, "n": len(base), "acc": _pct(_mean(list(base.values()))),
             "baseline_acc": math.nan, "delta": math.nan}]
    for v in variants:
        got = _rates(screen, v, qids)
        acc = _mean(list(got.values()))
        b = _mean([base[q] for q in got if q in base])
        rows.append({"variant": v, "n": len(got), "acc": _pct(acc), "baseline_acc": _pct(b),
                     "delta": round(_pct(acc) - _pct(b), 1) if got else math.nan})
    return pd.DataFrame(rows, columns=["variant", "n", "acc", "baseline_acc", "delta"])


def table9(
    screen: pd.DataFrame, bins: Mapping[str, str], qids: Sequence[str], variants: Sequence[str]
) -> pd.DataFrame:
    """Accuracy (%) and n per difficulty bin (of the baseline pass rate) and variant, the
    overall accuracy and its delta against the baseline on the same questions."""
    cols = ["variant"] + [f"{b}_{x}" for b in (*BINS, "all") for x in ("acc", "n")] + ["delta"]
    base = _rates(screen, BASELINE, qids)
    rows = []
    for v in (BASELINE, *variants):
        got = _rates(screen, v, qids)
        row: dict[str, object] = {"variant": v}
        for b in BINS:
            vals = [p for q, p in got.items() if bins.get(q) == b]
            row[f"{b}_acc"], row[f"{b}_n"] = _pct(_mean(vals)), len(vals)
        row["all_acc"], row["all_n"] = _pct(_mean(list(got.values()))), len(got)
        b_all = _pct(_mean([base[q] for q in got if q in base]))
        row["delta"] = math.nan if v == BASELINE or not got else round(row["all_acc"] - b_all, 1)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (no `tabulate` dependency); NaN prints as an em dash."""

    def cell(x: object) -> str:
        if isinstance(x, float):
            return "—" if math.isnan(x) else f"{x:.1f}"
        return str(x).replace("|", "\\|")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """Write each table as `<name>.csv` and `<name>.md` into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        csv, md = out / f"{name}.csv", out / f"{name}.md"
        df.to_csv(csv, index=False)
        md.write_text(to_markdown(df), encoding="utf-8")
        paths += [csv, md]
    return paths


# ---------------------------------------------------------------------------------------------
# The whole screen


@dataclass
class ScreenResult:
    screen: pd.DataFrame  # schemas.SCREEN columns, one row per (question, variant)
    demo_status: list[DemoStatus]  # per (question, source): trials and demos found
    unavailable: list[DemoUnavailable]  # (question, variant) pairs whose demos are missing
    difficulty: dict[str, str]  # qid -> bin of its baseline pass rate
    analysis_qids: list[str]  # intersection, not extremely hard
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # table7, table8, table9
    skipped: list[str] = field(default_factory=list)  # teachers not screened (external)


def _source_needs(teachers: Sequence[TeacherSpec]) -> dict[str, tuple[int, int, str]]:
    """source -> (correct, wrong, teacher name of its first user) over the self-* teachers."""
    needs: dict[str, tuple[int, int, str]] = {}
    for t in teachers:
        req = requirements(t.mode)
        if not req.needs_demos:
            continue
        src = source_name(t)
        c, w, first = needs.get(src, (0, 0, t.name))
        needs[src] = (max(c, req.n_correct), max(w, req.n_wrong), first)
    return needs


def run_screen(
    model: LanguageModel,
    task: Task,
    questions: Sequence[Question],
    teachers: Sequence[TeacherSpec],
    config: RunConfig,
    bank: DemoBank,
    out_dir: str | Path | None,
    progress: Progress | None = None,
    *,
    sources: Mapping[str, LanguageModel] | None = None,
    summarizer: LanguageModel | None = None,
) -> ScreenResult:
    """Demos (reused from `bank`), summaries, baseline and variant pass rates, tables 7-9.

    `model` is the student. `sources` maps the name of each self-1c-src teacher to its loaded
    source model; `summarizer` writes the summaries (None: the student). Writes `screen.csv`,
    `screen.parquet` and the tables as CSV + Markdown into `out_dir` (unless None)."""
    sources = dict(sources or {})
    cfg_s, ctx = config.screen, config.context
    params = SamplingParams(
        temperature=cfg_s.temperature,
        top_p=config.sampling.top_p,
        max_new_tokens=config.sampling.max_new_tokens,
        stop_strings=tuple(config.sampling.stop_strings),
    )
    sys_prompt = None  # each backend puts its own ModelSpec.system_prompt first
    groups = config.sampling.batch_groups
    screened = [t for t in teachers if t.mode != "external"]
    skipped = [t.name for t in teachers if t.mode == "external"]

    # 1. baseline
    users = {q.qid: task.user_message(q) for q in questions}
    base = pass_rates(model, task, questions, users, params, G=cfg_s.G, seed=config.seed,
                      variant=BASELINE, system_prompt=sys_prompt, groups_per_call=groups,
                      progress=progress)

    # 2. demos per source, then summaries
    statuses: list[DemoStatus] = []
    correct_demo: dict[str, set[str]] = {}
    for src, (n_c, n_w, first) in _source_needs(screened).items():
        if src == STUDENT_SOURCE:
            src_model = model
        else:
            users_of = [t for t in screened if source_name(t) == src and t.name in sources]
            if not users_of:
                raise ValueError(f"teacher '{first}' (self-1c-src) needs its source model: "
                                 f"pass sources={{'{first}': model}}")
            src_model = sources[users_of[0].name]
        st = bank.generate(src_model, task, questions, ctx, source=src, need_correct=n_c,
                           need_wrong=n_w, max_new_tokens=config.sampling.max_new_tokens,
                           system_prompt=sys_prompt, seed=config.seed,
                           requests_per_call=groups * 8, progress=progress)
        statuses += st
        correct_demo[src] = {s.qid for s in st if s.has_correct}
    summ = summarizer or model
    for t in screened:
        req = requirements(t.mode)
        if req.summarized:
            bank.summarize(summ, task, questions, ctx, source=source_name(t),
                           n_correct=req.n_correct, n_wrong=req.n_wrong,
                           max_new_tokens=config.sampling.max_new_tokens,
                           system_prompt=sys_prompt, seed=config.seed,
                           requests_per_call=groups * 8, progress=progress)

    # 3. analysis set, then the variants on it
    rows = [_row(q.qid, BASELINE, *base[q.qid], True) for q in questions]
    screen = pd.DataFrame(rows)
    bins = {q: difficulty(p) for q, p in zip(screen["qid"], screen["pass_rate"], strict=True)}
    keep = analysis_questions(screen, correct_demo, cfg_s.require_all_sources)
    keep_set = set(keep)
    missing: list[DemoUnavailable] = []
    for t in screened:
        msgs: dict[str, str] = {}
        for q in questions:
            try:
                msgs[q.qid] = bank.context(t.mode, q, users[q.qid], source_name(t))
            except DemoUnavailable as err:
                missing.append(err)
        got = pass_rates(model, task, [q for q in questions if q.qid in keep_set], msgs, params,
                         G=cfg_s.G, seed=config.seed, variant=t.name, system_prompt=sys_prompt,
                         groups_per_call=groups, progress=progress)
        for q in questions:
            n, k = got.get(q.qid, (0, 0))
            rows.append(_row(q.qid, t.name, n, k, q.qid in msgs))
    screen = pd.DataFrame(rows, columns=["qid", "variant", "n", "n_correct", "pass_rate",
                                         "available"])
    variants = [t.name for t in screened]
    tables = {
        "table7": table7([q.qid for q in questions], correct_demo),
        "table8": table8(screen, keep, variants),
        "table9": table9(screen, bins, keep, variants),
    }
    result = ScreenResult(screen, statuses, missing, bins, keep, tables, skipped)
    if out_dir is not None:
        write_screen(result, out_dir)
    return result


def _row(qid: str, variant: str, n: int, n_correct: int, available: bool) -> dict[str, object]:
    return {"qid": qid, "variant": variant, "n": n, "n_correct": n_correct,
            "pass_rate": n_correct / n if n else math.nan, "available": available}


def write_screen(result: ScreenResult, out_dir: str | Path) -> list[Path]:
    """screen.csv / screen.parquet (schemas.SCREEN), demo_status.csv, tables 7-9 (CSV + MD)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillscope.schemas import SCREEN

    out = Path(out_dir)
    paths = write_tables(result.tables, out)
    pq.write_table(pa.Table.from_pandas(result.screen, schema=SCREEN, preserve_index=False),
                   out / "screen.parquet")
    result.screen.to_csv(out / "screen.csv", index=False)
    status = pd.DataFrame(
        [{"qid": s.qid, "source": s.source, "trials": s.trials, "n_correct": s.n_correct,
          "n_wrong": s.n_wrong, "need_correct": s.need_correct, "need_wrong": s.need_wrong,
          "satisfied": s.satisfied} for s in result.demo_status],
        columns=["qid", "source", "trials", "n_correct", "n_wrong", "need_correct",
                 "need_wrong", "satisfied"],
    )
    status.to_csv(out / "demo_status.csv", index=False)
    return [*paths, out / "screen.parquet", out / "screen.csv", out / "demo_status.csv"]

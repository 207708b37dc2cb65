"""A run as the report sees it: its tables, resolved config and provenance, and per-token views
of the representative paths (alignment per teacher and method, S_u children with P_theta,
P_te and P_hat) shared by the HTML report, `show` and `export`.

Token texts are model output: this module passes them through untouched; every renderer
escapes them for its own medium.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from distillscope.analysis import NODE_KEY, read_table

DEFAULT_N_SIG = 20
NO_TEACHER = ("", "none", "-")  # how a teacher-free (drgrpo) row may be labelled


@dataclass
class Run:
    run_dir: Path
    tables: dict[str, pd.DataFrame]
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    truncated: tuple[int, int] = (0, 0)  # (rollouts, stopped at max_new_tokens)
    incomplete: str | None = None  # why the tables are not the whole run (header.incomplete_note)

    @property
    def nodes(self) -> pd.DataFrame:
        return self.tables["nodes"]

    @property
    def n_sig(self) -> int:
        return int((self.config.get("tree") or {}).get("n_sig", DEFAULT_N_SIG))

    @property
    def teachers(self) -> list[str]:
        """Teachers with at least one row of a teacher-dependent method (drgrpo is not one)."""
        n = self.nodes
        names = n.loc[n["method"] != "drgrpo", "teacher"]
        return sorted(t for t in set(names) if t not in NO_TEACHER)

    @property
    def scored_teachers(self) -> list[str]:
        """Teachers scored in the run: those with rows, and those the provenance records as
        scored (a teacher may have no decision point at all)."""
        rec = self.provenance.get("teachers_scored") or []
        rec = [str(t) for t in rec] if isinstance(rec, list) else []
        return sorted(set(self.teachers) | set(rec))

    def unknown_teacher(self, teacher: str, have: list[str]) -> ValueError:
        """The error for a --teacher that is not among `have` (the run's scored teachers): a
        teacher of the configuration that has no scores yet is told apart from a typo."""
        configured = [str(t.get("name")) for t in self.config.get("teachers") or []
                      if isinstance(t, dict)]
        from distillscope.store import RunStore

        scored_units = any(u.endswith(f"/c-score-{teacher}")
                           for u in RunStore(self.run_dir).done_units())
        if scored_units:
            return ValueError(f"teacher {teacher!r} was scored but has no decision point in "
                              "this run (no representative path has one: every question "
                              "excluded, or no node with two children that differ)")
        if teacher in configured:
            return ValueError(f"teacher {teacher!r} is in this run's configuration but has no "
                              "scores yet (the run stopped before scoring it): rerun the "
                              "command that made the run to finish it")
        return ValueError(f"unknown teacher {teacher!r}; this run has: "
                          f"{', '.join(have) or 'none'}")

    @property
    def methods(self) -> list[str]:
        order = ["gkd", "sampled", "minillm", "drgrpo"]
        present = set(self.nodes["method"])
        return [m for m in order if m in present] + sorted(present - set(order))


# Unicode bidirectional controls (embeddings, overrides, isolates, marks): in model or
# dataset text they would reorder what follows them on screen (a path, a number).
BIDI_CONTROLS = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                           *range(0x2066, 0x206A)])


def visible(s: str) -> str:
    """Control characters other than newline and tab -> Unicode control pictures, so model
    text can neither hide itself nor drive a terminal (ESC) or break a page (NUL); bidi
    controls -> a visible escape such as <U+202E>, so they cannot reorder the display."""
    return "".join(
        chr(0x2400 + ord(c)) if ord(c) < 32 and c not in "\n\t"
        else "\u2421" if c == "\x7f"
        else "\ufffd" if 0x80 <= ord(c) < 0xA0  # C1 controls (CSI and friends)
        else f"<U+{ord(c):04X}>" if ord(c) in BIDI_CONTROLS
        else c
        for c in s
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    from distillscope.store import StoreError

    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise StoreError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); restore it "
                         "from a copy of the run's configuration") from None
    return data if isinstance(data, dict) else {}


def load_run(run_dir: str | Path, names: tuple[str, ...] | None = None) -> Run:
    """Read a run directory: tables (all of schemas.py unless `names`), config.yaml and
    provenance.json when present. A run with a damaged unit (a part that does not match its
    commit marker) is refused: a report of it would pass a partial run off as complete."""
    from distillscope.schemas import SCHEMAS
    from distillscope.store import RunStore, StoreError

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run directory")
    store = RunStore(run_dir)
    damage = store.damage_report()
    if damage:
        more = f" (and {len(damage) - 1} more unit(s))" if len(damage) > 1 else ""
        raise StoreError(f"{run_dir} is damaged, so it is not reported as complete: "
                         f"{damage[0]}{more}; rerun the command that made the run (the same "
                         "'distillscope run' or 'score') to recompute it")
    tables = {n: read_table(run_dir, n) for n in (names or tuple(SCHEMAS))}
    prov = store.read_json("provenance.json")
    return Run(run_dir, tables, _read_yaml(run_dir / "config.yaml"), prov)


# ---------------------------------------------------------------------------------------------
# Per-token views


@dataclass
class Child:
    token_text: str
    p_hat: float
    visits: int
    p_student: float
    p_teacher: dict[str, float]
    on_path: bool


@dataclass
class NodeView:
    depth: int
    sr_range: float
    visits: int
    n_children: int
    align: dict[tuple[str, str], float]  # (teacher, method) -> align (NaN: undefined)
    children: list[Child]


@dataclass
class PathView:
    qid: str
    path_id: int
    correct: bool
    tokens: list[str]
    nodes: dict[int, NodeView]  # depth -> decision point


def _f(x: Any) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


def path_views(run: Run, only: tuple[str, int] | None = None) -> list[PathView]:
    """One view per representative path (or only the path `only` = (qid, path_id)), in
    (qid, path_id) order. A depth appears in `nodes` when the nodes table has a decision
    point there; its children are those of S_u (visits >= n_sig)."""
    paths = run.tables["paths"]
    nodes, children = run.nodes, run.tables["children"]
    dist = run.tables["distributions"]
    if only is not None:
        q, p = only

        def sel(df: pd.DataFrame) -> pd.DataFrame:
            return df[(df["qid"] == q) & (df["path_id"] == p)]

        paths, nodes, children, dist = sel(paths), sel(nodes), sel(children), sel(dist)
    nodes = nodes[(nodes["n_children"] >= 2) & (nodes["sr_range"] > 0)]
    align: dict[tuple, dict] = {}
    meta: dict[tuple, tuple] = {}
    teachers = run.teachers
    for r in nodes.itertuples(index=False):
        key = (r.qid, int(r.path_id), int(r.depth))
        d = align.setdefault(key, {})
        if r.teacher is None or r.teacher in NO_TEACHER:  # teacher-free row (drgrpo)
            for t in teachers:
                d.setdefault((t, r.method), _f(r.align))
        else:
            d[(r.teacher, r.method)] = _f(r.align)
        meta.setdefault(key, (_f(r.sr_range), int(r.visits), int(r.n_children)))
    su = children[children["visits"] >= run.n_sig]
    probs: dict[tuple, dict[str, float]] = {}
    cols = [dist[c].to_numpy() for c in ("qid", "path_id", "depth", "token", "model", "prob")]
    for q, p, d, k, model, prob in zip(*cols, strict=True):
        probs.setdefault((q, int(p), int(d), int(k)), {})[model] = _f(prob)
    kids: dict[tuple, list[Child]] = {}
    for r in su.sort_values(NODE_KEY + ["p_hat"], ascending=[True] * 3 + [False]).itertuples(
        index=False
    ):
        key = (r.qid, int(r.path_id), int(r.depth))
        if key not in meta:
            continue
        pr = probs.get(key + (int(r.token),), {})
        kids.setdefault(key, []).append(
            Child(str(r.token_text), _f(r.p_hat), int(r.visits), pr.get("student", math.nan),
                  {t: pr.get(t, math.nan) for t in teachers}, bool(r.on_path))
        )
    by_path: dict[tuple, dict[int, NodeView]] = {}
    for key, (sr, vis, nch) in meta.items():
        by_path.setdefault(key[:2], {})[key[2]] = NodeView(
            key[2], sr, vis, nch, align.get(key, {}), kids.get(key, [])
        )
    out = []
    for r in paths.sort_values(["qid", "path_id"]).itertuples(index=False):
        toks = [str(t) for t in (r.tokens if r.tokens is not None else [])]
        nv = by_path.get((r.qid, int(r.path_id)), {})
        out.append(PathView(str(r.qid), int(r.path_id), bool(r.correct), toks,
                            dict(sorted(nv.items()))))
    return out

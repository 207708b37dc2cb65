"""The repository's shape: no import circle, no file past 500 lines, every link resolves, and
nothing points outside the repository for its own method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Every package module imported anywhere in the file (top level, TYPE_CHECKING, lazy)."""
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            for a in n.names:
                full = f"{n.module}.{a.name}"
                out.add(full if full in mods else n.module)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return {m for m in out if m in mods}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return comps


def test_cycle_finder_finds_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_src():
    mods = _modules()
    # a package's lazy __init__ (the public API) is left out: importing a submodule runs it, but
    # it imports its submodules only on attribute access
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    graph = {m: _imports(p, mods) - packages - {m} for m, p in mods.items() if m not in packages}
    assert find_cycles(graph) == []


def test_every_source_file_is_under_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _texts() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted(SRC.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    return [f for f in files if f != Path(__file__).resolve()]


def test_nothing_points_at_the_internal_spec():
    bad = []
    for f in _texts():
        text = f.read_text()
        if "DESIGN.md" in text:
            bad.append(f"{f.relative_to(ROOT)}: DESIGN.md")
        # benchmarks read the shared data at run time; nothing else may point there
        if "../shared" in text and f.parent.name != "benchmarks":
            bad.append(f"{f.relative_to(ROOT)}: ../shared")
    assert bad == []


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_doc_links_resolve():
    """Every relative link in README/docs, and every `docs/x.md#anchor` cited in the code,
    names a file that exists and a heading that exists in it."""
    bad = []
    for f in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", f.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.exists():
                bad.append(f"{f.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{f.name}: {target} (no such heading)")
    for f in sorted(SRC.rglob("*.py")):
        for doc, anchor in re.findall(r"docs/([\w.-]+\.md)#([\w-]+)", f.read_text()):
            dest = ROOT / "docs" / doc
            if not dest.exists() or anchor not in _anchors(dest):
                bad.append(f"{f.relative_to(ROOT)}: docs/{doc}#{anchor}")
    assert bad == []

"""The `quickstart` command (registered by cli.py): both quickstart settings, then `compare`.

    distillscope quickstart [--out runs/quickstart]

OUT/yesno and OUT/choice are run directories (configs/quickstart.yaml and
configs/quickstart-choice.yaml: the embedded SmolLM2-135M on the bundled yes/no and
multiple-choice questions), each with its report; OUT/compare holds `distillscope compare`
over the two. The model is loaded once for both runs. Each setting ends with its teacher
ranking and two lines in words; the command ends with the comparison's verdict and the
correct-vs-incorrect contrast pooled over both settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.console import Console

from distillscope.cliutil import ConfigError, _print_ranking, _run, _threads, console

__all__ = ["run_quickstart"]


def _check_layout(out_dir: Path) -> None:
    """OUT must not be a run directory itself (the layout of earlier versions, one run in OUT):
    the two settings would be written inside someone's run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a directory")
    if (out_dir / "config.yaml").is_file() or (out_dir / "units").is_dir():
        raise ConfigError(
            f"--out {out_dir} is a run directory (an earlier quickstart wrote one run there); "
            f"the quickstart now writes {out_dir}/yesno, {out_dir}/choice and "
            f"{out_dir}/compare: give another --out, or move that run away")


def run_quickstart(out_dir: Path, *, force: bool, threads: Optional[int], wait: bool) -> None:
    from distillscope.presets import QUICKSTART_SETTINGS, quickstart_config
    from distillscope.report.compare_page import write_compare
    from distillscope.report.terminal import compare_words

    _threads(threads)
    _check_layout(out_dir)
    models: dict = {}  # one model load for both settings
    runs, labels = [], []
    out = Console()
    for i, (kind, label) in enumerate(QUICKSTART_SETTINGS, 1):
        run_dir = out_dir / kind
        console.print(f"[bold]setting {i} of {len(QUICKSTART_SETTINGS)}: {label} questions[/] "
                      f"({run_dir})")
        html = _run(quickstart_config(kind), run_dir, force=force, report=True, wait=wait,
                    models=models)
        if html is not None:
            _print_ranking(html, run_dir)
        runs.append(run_dir)
        labels.append(label)
    path = write_compare(runs, out_dir / "compare", labels=labels)
    summary = json.loads((out_dir / "compare" / "compare.json").read_text(encoding="utf-8"))
    console.print(f"compare: {path}", markup=False, highlight=False)
    for i, line in enumerate(compare_words(summary)):
        out.print(("Across the two settings: " if i == 0 else "") + line, markup=False,
                  highlight=False)
    console.print(f"[bold green]done[/]: open {runs[0] / 'report' / 'report.html'}, "
                  f"{runs[1] / 'report' / 'report.html'} and {path}")

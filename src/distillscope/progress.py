"""Progress reporting for long phases, and stage timing.

Library code reports through a `Reporter`; the CLI passes a rich one (bar, items/s, ETA), tests
and the Python API get the silent default. Stage times go into a flat dict with slash-namespaced
keys (`time/phase1`), as STYLE.md asks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Bar(Protocol):
    def advance(self, n: float = 1) -> None:
        """n units of work done now."""

    def skip(self, n: float = 1) -> None:
        """n units found already done (a resumed run): out of the total, not in the rate."""


class Reporter(Protocol):
    def bar(self, description: str, total: float | None, unit: str = "items"): ...

    def log(self, message: str) -> None: ...


class _NullBar:
    def advance(self, n: float = 1) -> None:
        pass

    def skip(self, n: float = 1) -> None:
        pass


class NullReporter:
    @contextmanager
    def bar(self, description: str, total: float | None, unit: str = "items") -> Iterator[Bar]:
        yield _NullBar()

    def log(self, message: str) -> None:
        pass


def mean_rate(task) -> float | None:
    """This invocation's work over the bar's time. rich's own estimate looks at the last
    seconds only, so one large batch finishing at once read as thousands per second."""
    work, elapsed = task.fields.get("work", 0.0), task.elapsed
    return work / elapsed if work and elapsed else None


def rate_text(task, unit: str) -> str:
    rate = mean_rate(task)
    return f"{rate:,.1f} {unit}/s" if rate else f"-- {unit}/s"


def eta_text(task) -> str:
    rate = mean_rate(task)
    if task.total is None or not rate:
        return "-:--:--"
    left = int(max(0.0, task.total - task.completed) / rate)
    return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


class RichReporter:
    """A rich progress display: description, bar, done/total, rate in `unit`/s, ETA."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def bar(self, description: str, total: float | None, unit: str = "items") -> Iterator[Bar]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        class _Rate(TextColumn):
            def render(self, task):  # type: ignore[override]
                from rich.text import Text

                return Text(rate_text(task, unit), style="cyan")

        class _Eta(TextColumn):
            def render(self, task):  # type: ignore[override]
                from rich.text import Text

                return Text(eta_text(task), style="cyan")

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(""),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            _Eta(""),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total, work=0.0)

            class _Bar:
                skipped = 0.0
                work = 0.0

                def advance(self, n: float = 1) -> None:
                    self.work += n
                    progress.update(task, advance=n, work=self.work)

                def skip(self, n: float = 1) -> None:
                    # work a resumed run replays: shrink the total, so the rate and the ETA
                    # describe this invocation's work only, and say how much was found done
                    if not n:
                        return
                    self.skipped += n
                    t = next(t for t in progress.tasks if t.id == task)
                    total = None if t.total is None else max(t.completed, t.total - n)
                    progress.update(task, total=total,
                                    description=f"{description} ({self.skipped:,.0f} done before)")

            yield _Bar()
            # The phase is done: a total that was an estimate (targeted rollouts stop early
            # when the cascade already gave a child its visits) or unknown (adaptive budget)
            # must not leave a finished bar at 27446/28282 with an ETA.
            t = next(t for t in progress.tasks if t.id == task)
            progress.update(task, total=t.completed)

    def log(self, message: str) -> None:
        self.console.print(message)


class Timer:
    """`with timer("phase1"): ...` accumulates seconds under `time/phase1`."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time/{stage}"
            self.metrics[key] = self.metrics.get(key, 0.0) + time.perf_counter() - t0

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
            TimeRemainingColumn,
        )

        class _Rate(TextColumn):
            def render(self, task):  # type: ignore[override]
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.1f} {unit}/s" if speed else f"-- {unit}/s", style="cyan")

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(""),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task(description, total=total)

            class _Bar:
                skipped = 0.0

                def advance(self, n: float = 1) -> None:
                    progress.advance(task, n)

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
            speed = t.finished_speed or t.speed
            progress.update(task, total=t.completed)
            t.finished_speed = speed

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

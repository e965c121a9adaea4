"""A rich progress bar over the analysis passes, on the terminal only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    """One bar per pass (measurements, sensitivity, suggestions)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def task(self, label: str, total: int) -> Callable[[], None]:
        task = self.progress.add_task(label, total=max(total, 0))
        return lambda: self.progress.advance(task)


@contextmanager
def progress_bar(console: Console) -> Iterator[RichProgress]:
    """Bars on ``console`` while it is a terminal; nothing is printed otherwise."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with bar:
        yield RichProgress(bar)

"""The stderr console: rich progress bars for the engine and one-line notes. stdout stays data-only."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn

from tempo_cli.pipeline import Progress as EngineProgress

stderr = Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """``message`` on stderr as written: its lines are not wrapped to the terminal's width (80 columns when stderr is a
    file or a pipe), so a one-line note stays one line for whoever reads or greps the log."""
    stderr.print(message, markup=False, soft_wrap=True)


class RichProgress(EngineProgress):
    """Progress bars on stderr with ETA, one line per task; silent when ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        if self.quiet:
            yield lambda n=1, status="": None
            return
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=stderr, transient=False) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance(n: int = 1, status: str = "") -> None:
                bar.update(task, advance=n, **({"status": status} if status else {}))

            yield advance

    def log(self, message: str) -> None:
        if not self.quiet:
            note(message)

"""Progress bars for long work, shown on stderr unless switched off.

The library reports progress through :func:`bar`; the CLI decides whether bars are drawn
(``--quiet`` turns them off), so notebook callers get bars too and tests can silence them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Switch progress bars on or off for the whole process."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether progress bars are drawn."""
    return _enabled


class Bar:
    """A handle on one progress bar; ``advance`` and ``update`` are no-ops when bars are off."""

    def __init__(self, progress: Progress | None, task_id: TaskID | None) -> None:
        self._progress = progress
        self._task = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(
        self, *, description: str | None = None, total: float | None = None, **fields: object
    ) -> None:
        """Change the description, total or extra fields (e.g. ``postfix='loss 0.31'``)."""
        if self._progress is not None and self._task is not None:
            kwargs: dict[str, object] = dict(fields)
            if description is not None:
                kwargs["description"] = description
            if total is not None:
                kwargs["total"] = total
            self._progress.update(self._task, **kwargs)  # type: ignore[arg-type]


@contextmanager
def bar(total: float | None, description: str, *, unit: str = "") -> Iterator[Bar]:
    """A progress bar on stderr for ``total`` steps; yields a :class:`Bar`."""
    if not _enabled:
        yield Bar(None, None)
        return
    console = Console(file=sys.stderr)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
        console=console,
        transient=False,
        # rich draws nothing when stderr is not a terminal (CI logs, pipes); that is what we want.
        disable=not console.is_terminal,
    )
    with progress:
        task_id = progress.add_task(description, total=total, postfix="")
        yield Bar(progress, task_id)

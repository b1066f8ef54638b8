"""A progress line on stderr while it is a terminal (records, rate, ETA where known); nothing
at all otherwise, so logs and pipes stay as they were.

Log lines written while the line is shown go above it: the root logger's stderr handlers
write through rich's console for that time.
"""
from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

__all__ = ["TerminalProgress", "follow"]


class RateColumn(ProgressColumn):
    """Records per second (rich's own speed columns count bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} records/s" if task.speed else "", style="progress.data.speed")


class TerminalProgress:
    """``with TerminalProgress("producing") as bar: bar.update(n, total)`` — a no-op unless
    ``enabled`` (default: stderr is a terminal)."""

    def __init__(self, description: str, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.description = description
        self._progress: Progress | None = None
        self._task = None
        self._swapped: list[tuple[logging.StreamHandler, object]] = []

    def __enter__(self) -> "TerminalProgress":
        if not self.enabled:
            return self
        console = Console(stderr=True)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.completed:,.0f}{task.fields[of]} records"), RateColumn(),
                                  TimeRemainingColumn(), console=console, transient=True)
        self._task = self._progress.add_task(self.description, total=None, of="")
        self._progress.start()
        for handler in logging.getLogger().handlers:  # log lines go above the progress line
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, console.file):
                self._swapped.append((handler, handler.setStream(sys.stderr)))
        return self

    def update(self, completed: float, total: float | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total,
                                  of=f" of {total:,.0f}" if total else "")

    def __exit__(self, *exc) -> None:
        if self._progress is None:
            return
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._progress.stop()


@contextmanager
def follow(read: Callable[[], "tuple[float, float | None] | None"], description: str, enabled: bool | None = None,
           every_s: float = 0.5) -> Iterator[None]:
    """Show ``read()`` = (completed, total or None) every ``every_s`` while the block runs
    (a daemon thread polls it; a read that raises skips that refresh)."""
    bar = TerminalProgress(description, enabled)
    if not bar.enabled:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                now = read()
            except Exception:  # noqa: BLE001 - a display refresh never stops the work it shows
                continue
            if now is not None:
                bar.update(*now)

    with bar:
        thread = threading.Thread(target=poll, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2.0)

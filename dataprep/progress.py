"""What a run shows while it works: one live line in a terminal, plain log lines elsewhere.

The pipeline is a chain of generators, so several stages advance together (reading, clean and
validate stream one record at a time) and a stage that needs every record (dedup, split) first
swallows its whole input and then works. The display follows the *current* stage: the most
upstream stage whose output is not finished yet. While reading, that is ``read`` and only the
count is known; after reading, a stage's total is exact (everything it will see has already left
the stage above it), so records done / total, the rate and an ETA mean something. Stages that
stream together are named together (``balance → augment → write``).

- In a terminal (stderr is a TTY): one transient ``rich`` progress line, replaced stage by stage,
  gone before the summary is printed (so the summary starts at column 0).
- Elsewhere (CI logs, pipes): plain lines on stderr, one when a stage starts and at most one
  every ``interval`` seconds while it runs; never an escape code.
- ``verbosity`` 0 (``--quiet``): nothing; 2 (``-v``): one line per finished stage as well
  (records in and out, seconds), and the post-run steps.

>>> p = make_progress(verbosity=0)
>>> list(p.track("read", iter([1, 2])))
[1, 2]
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
LOG_INTERVAL = 10.0  # seconds between two plain log lines of one stage
TICK = 0.1  # seconds between two updates of the live line


class RunProgress:
    """Counts records leaving each stage and decides which stage is current. Subclasses show it."""

    def __init__(self, verbosity: int = 1) -> None:
        self.verbosity = verbosity
        self.names: list[str] = []
        self.out: list[int] = []  # records that left stage i
        self.finished: list[bool] = []
        self.started_at: list[float | None] = []
        self.first_out: list[float | None] = []  # when stage i passed on its first record
        self.current: int | None = None
        self._last_tick = 0.0

    # -- what the pipeline calls ---------------------------------------------------------------
    def track(self, name: str, stream: Iterable[T]) -> Iterator[T]:
        """Count what ``stream`` (the output of stage ``name``) yields; stages in call order."""
        i = len(self.names)
        self.names.append(name)
        self.out.append(0)
        self.finished.append(False)
        self.started_at.append(None)
        self.first_out.append(None)
        return self._count(i, stream)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A post-run step (a stage's finish hook, the Data Docs, the report)."""
        t0 = time.monotonic()
        self.on_step(name)
        yield
        if self.verbosity >= 2:
            self.line(f"{name}: done in {time.monotonic() - t0:.1f} s")

    def close(self) -> None:
        """Remove the live display; must be called before the summary is printed."""

    # -- bookkeeping ---------------------------------------------------------------------------
    def _count(self, i: int, stream: Iterable[T]) -> Iterator[T]:
        self.started_at[i] = self.started_at[i] or time.monotonic()
        self._update()
        for item in stream:
            self.out[i] += 1
            if self.first_out[i] is None:
                self.first_out[i] = time.monotonic()
            now = time.monotonic()
            if now - self._last_tick >= TICK:
                self._last_tick = now
                self._update()
            yield item
        self.finished[i] = True
        if self.verbosity >= 2:
            took = time.monotonic() - (self.started_at[i] or time.monotonic())
            into = "" if i == 0 else f"{self.out[i - 1]:,} in, "
            self.line(f"{self.names[i]}: {into}{self.out[i]:,} out, {took:.1f} s")
        self._update()

    def total(self, i: int) -> int | None:
        """Records stage ``i`` will see; None while reading (not known before the end)."""
        if i == 0 or not self.finished[i - 1]:
            return None
        return self.out[i - 1]

    def group(self, i: int) -> str:
        """The current stage and the stages downstream that stream with it."""
        names = [self.names[i]]
        for j in range(i + 1, len(self.names)):
            if self.out[j] == 0 or self.finished[j]:
                break
            names.append(self.names[j])
        return " → ".join(names)

    def _update(self) -> None:
        current = next((i for i, done in enumerate(self.finished) if not done), None)
        if current != self.current:
            self.current = current
            if current is not None:
                self.on_stage(current)
        elif current is not None:
            self.on_tick(current)

    def rate_eta(self, i: int) -> tuple[float | None, float | None]:
        # Measured from the stage's first output record: a stage that needs every record first
        # works without output, and a streaming stage produced most of its output while the
        # stages above it were current.
        done, total, first = self.out[i], self.total(i), self.first_out[i]
        elapsed = time.monotonic() - first if first is not None else 0.0
        rate = (done - 1) / elapsed if done > 1 and elapsed >= 0.2 else None
        eta = (max(total - done, 0) / rate) if rate and total is not None else None
        return rate, eta

    # -- what subclasses show ------------------------------------------------------------------
    def on_stage(self, i: int) -> None:
        pass

    def on_tick(self, i: int) -> None:
        pass

    def on_step(self, name: str) -> None:
        pass

    def line(self, text: str) -> None:
        pass


class LogProgress(RunProgress):
    """Plain lines for logs: no colour, no cursor movement, nothing rewritten in place.

    A stage that needs every record works for a while without passing any on; a background
    thread then still writes a status line every ``interval`` seconds, so a log never goes quiet
    for longer than that."""

    def __init__(self, verbosity: int = 1, stream: TextIO | None = None,
                 interval: float = LOG_INTERVAL) -> None:
        super().__init__(verbosity)
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last_line = time.monotonic()  # the first status line comes after one interval
        self._step: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0 and verbosity >= 1:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if time.monotonic() - self._last_line < self.interval:
                continue
            if self._step is not None:
                self._last_line = time.monotonic()
                self.line(f"{self._step} …")
            elif self.current is not None:
                self.on_tick(self.current)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def line(self, text: str) -> None:
        if self.verbosity >= 1:
            with self._lock:  # the heartbeat thread writes too; one whole line at a time
                print(f"[dataprep] {text}", file=self.stream, flush=True)

    def _status(self, i: int) -> str:
        done, total = self.out[i], self.total(i)
        rate, eta = self.rate_eta(i)
        text = f"{self.group(i)}: {done:,}" + (f"/{total:,}" if total is not None else "")
        text += " records"
        if rate:
            text += f", {rate:,.0f} rec/s"
        if eta is not None:
            text += f", ETA {_clock(eta)}"
        return text

    def on_stage(self, i: int) -> None:
        if i > 0 and self.names[i - 1] == "read" and self.verbosity < 2:
            self.line(f"read: done, {self.out[i - 1]:,} records to process")  # totals known now
        if self.verbosity >= 2:
            total = self.total(i)
            self.line(f"{self.names[i]}: started" + (f" ({total:,} records)" if total is not None
                                                     else ""))
            self._last_line = time.monotonic()
        else:
            self.on_tick(i)  # a stage start is news, but not more often than every interval

    def on_tick(self, i: int) -> None:
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.line(self._status(i))

    def on_step(self, name: str) -> None:
        self._step = name
        now = time.monotonic()
        if self.verbosity >= 2 or now - self._last_line >= self.interval:
            self._last_line = now
            self.line(f"{name} …")


class LiveProgress(RunProgress):
    """One transient ``rich`` line: stage, records done / total, rate, ETA, elapsed."""

    def __init__(self, verbosity: int = 1, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        super().__init__(verbosity)
        self.console = Console(file=stream or sys.stderr)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]} ·"), TimeElapsedColumn(), TextColumn("elapsed"),
            console=self.console, transient=True, refresh_per_second=10)
        self.progress.start()
        self.task = self.progress.add_task("starting", total=None, rate="", eta="-")

    def _show(self, i: int, description: str | None = None) -> None:
        rate, eta = self.rate_eta(i)
        total = self.total(i)
        done = self.out[i]
        self.progress.update(
            self.task, description=description or self.group(i), completed=done,
            total=None if total is None else max(total, done),
            rate=f"{rate:,.0f} rec/s" if rate else "",
            eta=_clock(eta) if eta is not None else "-")

    def _new_task(self, description: str, total: int | None) -> None:
        # A fresh task per stage (rather than reset) so that rich forgets the old total and
        # the elapsed time counts from this stage's start.
        self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, rate="", eta="-")

    def on_stage(self, i: int) -> None:
        self._new_task(self.group(i), self.total(i))
        self._show(i)
        self.progress.refresh()  # every stage is drawn at least once, however short

    def on_tick(self, i: int) -> None:
        self._show(i)

    def on_step(self, name: str) -> None:
        self._new_task(name, None)
        self.progress.refresh()

    def line(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def make_progress(verbosity: int = 1, stream: TextIO | None = None,
                  live: bool | None = None) -> RunProgress:
    """The display for a run: nothing at verbosity 0, a live line on a terminal, else log lines.

    >>> type(make_progress(verbosity=1, live=False)).__name__
    'LogProgress'
    """
    stream = stream or sys.stderr
    if verbosity <= 0:
        return RunProgress(verbosity)
    if live is None:
        live = _is_terminal(stream)
    return LiveProgress(verbosity, stream) if live else LogProgress(verbosity, stream)


def _is_terminal(stream: Any) -> bool:
    import os

    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False

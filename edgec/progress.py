"""Progress on stderr for the command line (the Python API stays quiet unless given a log).

On a terminal, each running step shows a spinner with its elapsed time (rich) and log lines
scroll above it; elsewhere (CI logs, pipes) each step prints a start line and a done line with
its duration. ``--quiet`` prints nothing. stdout is never written: it belongs to the results
(``--json``).
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A log callable (``progress("message")``) that also times steps: ``progress.start(what)``
    returns a handle whose ``stop()`` ends the step (see ``edgec.api._Steps``)."""

    def __init__(self, quiet: bool = False, live: bool | None = None, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.live = _isatty(self.stream) if live is None else live
        self._bar = None

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {message}"
        if self._bar is not None:
            from rich.text import Text

            self._bar.console.print(Text(line), soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def start(self, what: str) -> _Step:
        return _Step(self, what)

    def _rich(self):
        if self._bar is None:
            from rich.console import Console
            from rich.progress import Progress as Bar
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            console = Console(file=self.stream, force_terminal=True)
            self._bar = Bar(SpinnerColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=console, transient=True)  # fmt: skip
            self._bar.start()
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class _Step:
    def __init__(self, progress: Progress, what: str):
        self.progress, self.what, self.t0 = progress, what, time.perf_counter()
        self.task = None
        if progress.quiet:
            return
        if progress.live:
            self.task = progress._rich().add_task(what, total=None)
        else:
            progress(f"{what} ...")

    def stop(self, ok: bool = True) -> None:
        p = self.progress
        if p.quiet:
            return
        dt = time.perf_counter() - self.t0
        if self.task is not None and p._bar is not None:
            p._bar.remove_task(self.task)
            if not p._bar.tasks:
                p.close()
        if ok:
            p(f"{self.what}: done in {dt:.1f} s")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

"""Progress on stderr, shared by every long-running step: rich bars on a terminal; in a log
(stderr not a terminal: CI, `2> file`, a pipe) one plain line per finished task or step, as pip
and Hugging Face's libraries print there, instead of nothing. `XOPT_PROGRESS=0` silences both.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


def out_console() -> Console:
    """Stdout for tables: the terminal's width, or wide enough when piped to a log."""
    return Console(width=None if sys.stdout.isatty() else 160)


def enabled() -> bool:
    return os.environ.get("XOPT_PROGRESS", "1") != "0"


def _log(line: str) -> None:
    """One progress line on stderr, from rank 0 only (a launcher's other ranks do the same work)."""
    from xopt.dist import is_main

    if is_main():
        print(f"xopt: {line}", file=sys.stderr, flush=True)


class LineProgress(Progress):
    """A Progress without a live display that logs one line per task when it finishes (count,
    elapsed time, its last `rate` field), and one for each task still unfinished when the
    Progress stops (interrupted work says how far it got)."""

    def __init__(self):
        super().__init__(TextColumn(""), disable=True)
        self._logged: set = set()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log_task(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_task(task_id)

    def stop(self) -> None:
        for task in self.tasks:
            self._log_task(task.id, stopped=True)
        super().stop()

    def _log_task(self, task_id, stopped: bool = False) -> None:
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None or task_id in self._logged:
            return
        done = task.total is not None and task.completed >= task.total    # also a task added complete (resumed)
        if not (done or stopped):
            return
        self._logged.add(task_id)
        count = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        rate = task.fields.get("rate")
        _log(f"{task.description}: {count}{'' if done else ' (stopped)'} in {task.elapsed or 0.0:.1f} s"
             + (f", {rate}" if rate else ""))


def _plain() -> bool:
    """Whether progress goes to a log rather than a terminal."""
    return not sys.stderr.isatty()


@contextlib.contextmanager
def bar():
    """A rich Progress (a `LineProgress` in a log); `p.add_task(desc, total=n)` then
    `p.advance(task, k)` or `p.update(task, advance=k, rate=...)`."""
    if enabled() and _plain():
        with LineProgress() as prog:
            yield prog
        return
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled(),
                    transient=not sys.stderr.isatty())
    with prog:
        yield prog


def track(items, description: str):
    """Iterate with a progress bar."""
    items = list(items)
    with bar() as p:
        t = p.add_task(description, total=len(items), rate="")
        for it in items:
            yield it
            p.advance(t)


@contextlib.contextmanager
def step(description: str):
    """A pulsing bar with the elapsed time while one opaque library call runs (ONNX export,
    ONNX Runtime's fusions or quantiser, a TensorRT engine build): no total to count against.
    In a log: one line when the call returns (or stops with an error), with its time."""
    if enabled() and _plain():
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            _log(f"{description}: stopped after {time.perf_counter() - t0:.1f} s")
            raise
        _log(f"{description}: done in {time.perf_counter() - t0:.1f} s")
        return
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                    disable=not enabled(), transient=not sys.stderr.isatty())
    with prog:
        prog.add_task(description, total=None)
        yield

"""Progress bars (rich) on stderr, shared by every long-running step."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


def out_console() -> Console:
    """Stdout for tables: the terminal's width, or wide enough when piped to a log."""
    return Console(width=None if sys.stdout.isatty() else 160)


def enabled() -> bool:
    return os.environ.get("XOPT_PROGRESS", "1") != "0"


@contextlib.contextmanager
def bar():
    """A rich Progress; `p.add_task(desc, total=n)` then `p.advance(task, k)`."""
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
    ONNX Runtime's fusions or quantiser, a TensorRT engine build): no total to count against."""
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                    disable=not enabled(), transient=not sys.stderr.isatty())
    with prog:
        prog.add_task(description, total=None)
        yield

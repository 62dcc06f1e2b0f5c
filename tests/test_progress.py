"""Progress in a log: where stderr is not a terminal (CI, `2> file`), one plain line per finished
task or step instead of nothing; on a terminal, rich's live bars."""

import re
import sys

import pytest

from xopt import progress


@pytest.fixture
def log(monkeypatch, capsys):
    """Progress on (the test session turns it off), stderr captured: not a terminal."""
    monkeypatch.setenv("XOPT_PROGRESS", "1")
    assert not sys.stderr.isatty()

    def lines():
        return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return lines


def test_track_prints_one_line_when_the_unit_finishes(log):
    assert list(progress.track(range(3), "eval units")) == [0, 1, 2]
    (line,) = log()
    assert re.fullmatch(r"xopt: eval units: 3/3 in \d+\.\d s", line), line


def test_bar_prints_a_line_per_finished_task_and_one_for_an_interrupted_one(log):
    with progress.bar() as p:
        a = p.add_task("eval e5/fp32", total=4, rate="")
        b = p.add_task("bench fp32 b1 s128", total=2, rate="warm-up")
        p.update(a, advance=2, rate="100 ex/s")
        assert log() == []                              # nothing until a task finishes
        p.update(a, advance=2, rate="120 ex/s")
        p.advance(b)
        (done,) = log()
        assert done.startswith("xopt: eval e5/fp32: 4/4 in ") and done.endswith(", 120 ex/s")
        p.update(a, rate="again")                     # a finished task is reported once
    (stopped,) = log()
    assert stopped.startswith("xopt: bench fp32 b1 s128: 1/2 (stopped) in ") and stopped.endswith(", warm-up")


def test_step_prints_its_time_when_the_call_returns_or_fails(log):
    with progress.step("ONNX export"):
        pass
    with pytest.raises(RuntimeError), progress.step("TensorRT build"):
        raise RuntimeError("boom")
    done, failed = log()
    assert re.fullmatch(r"xopt: ONNX export: done in \d+\.\d s", done)
    assert re.fullmatch(r"xopt: TensorRT build: stopped after \d+\.\d s", failed)


def test_off_and_on_a_terminal_no_plain_lines(log, monkeypatch):
    monkeypatch.setenv("XOPT_PROGRESS", "0")
    list(progress.track(range(2), "quiet"))
    with progress.step("quiet step"):
        pass
    assert log() == []
    monkeypatch.setenv("XOPT_PROGRESS", "1")
    monkeypatch.setattr(progress, "_plain", lambda: False)      # a terminal: rich's live bar, not lines
    with progress.bar() as p:
        assert not isinstance(p, progress.LineProgress)


def test_a_task_added_complete_is_reported_as_done(log):
    with progress.bar() as p:
        p.add_task("train stage 1", total=5, completed=5, rate="")    # a resumed run's finished stage
    (line,) = log()
    assert line.startswith("xopt: train stage 1: 5/5 in ") and "stopped" not in line


def test_only_rank_0_of_a_launch_prints_lines(log, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    list(progress.track(range(2), "train"))
    assert log() == []

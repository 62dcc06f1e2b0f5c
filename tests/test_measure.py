"""xopt.measure (timer, warm-up, timed loop, percentiles) and the fixed-batch scenario's interleaved rounds."""

import time

import numpy as np
import pytest

from xopt.measure import Measurement, Timer, percentiles, timed_loop, warm
from xopt.scenarios.fixed_batch import Shape, measure_interleaved
from xopt.variants.base import Runner


def test_percentiles_on_known_samples():
    st = percentiles(list(range(1, 101)))
    assert st["p50_ms"] == pytest.approx(50.5) and st["p99_ms"] == pytest.approx(99.01)
    assert st["min_ms"] == 1 and st["mean_ms"] == pytest.approx(50.5)


def busy_wait(ms):
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def test_timer_measures_a_busy_wait_and_a_sleep():
    # Against an independent clock read around the same call: the timer never reads less than
    # the known wait nor more than the outer clock, and adds well under a millisecond. The
    # wait itself may overrun by a scheduling slice on a loaded machine (a 2-core machine shared
    # by several jobs): the upper bound against the known value is loose on purpose.
    t = Timer("cpu")
    for fn, arg, ms in ((busy_wait, 5.0, 5.0), (time.sleep, 0.02, 20.0)):
        got, gaps = [], []
        for _ in range(5):
            o0 = time.monotonic_ns()
            g = t(fn, arg)
            outer = (time.monotonic_ns() - o0) / 1e6
            assert ms <= g <= outer
            got.append(g)
            gaps.append(outer - g)
        assert min(gaps) < 0.5 and min(got) < ms + 50


class FakeRunner(Runner):
    def __init__(self, name, ms):
        super().__init__(name, ("sentence_embedding",))
        self.ms = ms

    def prepare(self, ids, mask):
        return ids

    def run(self, x):
        busy_wait(self.ms)


def test_interleaved_measurement_ranks_two_runners_and_counts_real_tokens():
    shape = Shape(4, lengths=[3, 5, 9], source="test")
    ms = measure_interleaved({"fast": FakeRunner("fast", 1.0), "slow": FakeRunner("slow", 3.0)}, shape,
                             vocab_size=100, pad_id=1, rounds=3, min_iters=5, min_time_s=0.02)
    assert len(ms["fast"].round_p50_ms) == 3
    assert ms["slow"].samples_ms and np.median(ms["slow"].samples_ms) > 2 * np.median(ms["fast"].samples_ms)
    assert all(4 * 3 <= t <= 4 * 9 for t in ms["fast"].tokens)   # non-pad tokens of each batch
    ids, mask = shape.batches(100, 1)[0]
    assert ids.shape[1] == mask.sum(1).max() and (ids[mask == 0] == 1).all()


def test_timed_loop_respects_min_iters_and_time():
    r, m = FakeRunner("x", 0.5), Measurement()
    warm(r, [None], Timer(), m, max_iters=12)
    assert 1 < m.warmup <= 13
    timed_loop(r, [None], [8], Timer(), m, min_iters=7, min_time_s=0.01, max_time_s=1.0)
    assert len(m.samples_ms) >= 7


class RecordingRunner(FakeRunner):
    """Records the shape and the ids of every call; `timed_from` is the call count when the
    first timed loop starts."""

    def __init__(self):
        super().__init__("rec", 0.0)
        self.calls, self.timed_from = [], None

    def run(self, x):
        self.calls.append(np.array(x))


def test_warmup_calls_every_distinct_prepared_shape_before_the_first_timed_call(monkeypatch):
    from xopt.scenarios import fixed_batch

    real = fixed_batch.timed_loop

    def spy(runner, *a, **k):
        if runner.timed_from is None:
            runner.timed_from = len(runner.calls)
        return real(runner, *a, **k)

    monkeypatch.setattr(fixed_batch, "timed_loop", spy)
    shape = Shape(3, lengths=[2, 4, 7, 11, 16, 23, 30], source="test")
    r = RecordingRunner()
    ms = measure_interleaved({"rec": r}, shape, vocab_size=100, pad_id=1, rounds=1, min_iters=2, min_time_s=0.0,
                             warmup=1)       # a fixed warm-up of one call: far fewer calls than shapes
    prepared = {ids.shape for ids, _ in shape.batches(100, 1)}
    assert len(prepared) > 3
    assert {c.shape for c in r.calls[:r.timed_from]} >= prepared       # every shape before timing starts
    assert ms["rec"].warmup_shapes == len(prepared) and ms["rec"].warmup == 2


def test_real_token_ids_of_the_length_source_reach_the_runner():
    rows = [[0, 11, 12, 2], [0, 21, 22, 23, 24, 25, 2], [0, 31, 2]]
    shape = Shape(2, lengths=[len(x) for x in rows], source="texts", rows=rows)
    assert shape.input_ids == "text" and Shape(2, lengths=[3, 4], source="f").input_ids == "random"
    r = RecordingRunner()
    measure_interleaved({"rec": r}, shape, vocab_size=100, pad_id=1, rounds=1, min_iters=3, min_time_s=0.0, warmup=1)
    seen = set()
    for ids in r.calls:
        assert ids.shape[1] == max(int((x != 1).sum()) for x in ids)      # padded to the longest sentence
        for x in ids:
            real = [int(v) for v in x if v != 1]
            assert real in rows
            seen.add(tuple(real))
    assert len(seen) == 3

"""Kernels of xopt.kernels, whatever it exposes.

Convention: `xopt.kernels.BENCH_CASES` is a list of (name, fn, make_args) where
`make_args()` returns the argument of `fn` on the device `fn` runs on ("cuda" unless the
case's name ends in "-cpu"). Each case is timed with xopt.measure's Timer and loop.
Skipped, with the reason, while the package declares no cases or has no GPU to run them.
"""

import pytest

from xopt.measure import Measurement, Timer, timed_loop, to_pytest_benchmark, warm


def _cases():
    try:
        import xopt.kernels as k
    except ImportError as e:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"xopt.kernels does not import: {e}"))]
    cases = getattr(k, "BENCH_CASES", None)
    if not cases:
        return [pytest.param(None, marks=pytest.mark.skip(reason="xopt.kernels declares no BENCH_CASES yet"))]
    return [pytest.param(c, id=c[0]) for c in cases]


class _Call:
    def __init__(self, fn):
        self.run = fn


@pytest.mark.parametrize("case", _cases())
def test_kernel(benchmark, case):
    name, fn, make_args = case
    device = "cpu" if name.endswith("-cpu") else "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs an NVIDIA GPU (torch sees no CUDA device)")
    arg, timer, m = make_args(), Timer(device), Measurement()
    warm(_Call(fn), [arg], timer, m)
    for _ in range(3):
        timed_loop(_Call(fn), [arg], [0], timer, m, min_iters=20, min_time_s=0.2, max_time_s=5.0)
    to_pytest_benchmark(benchmark, m, kernel=name, cold_ms=m.cold_ms)
    assert len(m.samples_ms) >= 60

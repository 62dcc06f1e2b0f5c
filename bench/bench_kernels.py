"""Every op of xopt.kernels at the shapes listed in `xopt.kernels.BENCH_CASES` (pytest-benchmark).

    python -m pytest bench/bench_kernels.py --benchmark-json=kernels.json

Each case is timed with xopt.measure's Timer and loop (CUDA events after synchronising on the
GPU). "cuda" cases carry the `gpu` marker and skip, with the reason, where torch sees no GPU;
"-cpu" cases time the PyTorch reference path and run everywhere.
"""

import importlib.util

import pytest

from xopt.measure import Measurement, Timer, timed_loop, to_pytest_benchmark, warm
from xopt.kernels import BENCH_CASES


def _have_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


HAVE_CUDA = _have_cuda()
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def _param(case):
    marks = []
    if case.device == "cuda":
        marks = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (torch sees none)"),
                 pytest.mark.skipif(not HAVE_TRITON, reason="needs triton (pip install triton)")]
    return pytest.param(case, id=case.name, marks=marks)


class _Call:
    def __init__(self, fn):
        self.run = fn


@pytest.mark.parametrize("case", [_param(c) for c in BENCH_CASES])
def test_kernel(benchmark, case):
    arg, timer, m = case.make_args(), Timer(case.device), Measurement()
    warm(_Call(case.fn), [arg], timer, m)
    for _ in range(3):
        timed_loop(_Call(case.fn), [arg], [0], timer, m, min_iters=20, min_time_s=0.2, max_time_s=5.0)
    to_pytest_benchmark(benchmark, m, kernel=case.name, cold_ms=m.cold_ms)
    assert len(m.samples_ms) >= 60

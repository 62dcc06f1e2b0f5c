"""End-to-end evaluation throughput: `eval_demo` (tokenise, batch, run, score) of fp32 and
onnx-int8 of e5-small on demo-retrieval (the packaged model has no classification head) in
two languages, examples/s. Timed with xopt.measure's Timer and loop."""

import os

import pytest

from xopt.measure import Measurement, Timer, timed_loop, to_pytest_benchmark, warm
from xopt.variants import REGISTRY, load_variant

LANGS = ["de", "ja"]


class _Eval:
    """One call = one evaluation of the variant on LANGS (xopt.evaluate.eval_demo)."""

    def __init__(self, lv, suite):
        self.lv, self.suite, self.examples = lv, suite, 0

    def run(self, _):
        from xopt.evaluate import eval_demo

        from xopt.tasks import demo

        recs = eval_demo(self.lv, self.suite, tasks=(demo.RETRIEVAL,), langs=LANGS, max_examples=32)
        self.examples = sum(r["n_examples"] for r in recs if r["lang"] != "avg")


@pytest.mark.parametrize("name", [n for n in ("fp32", "onnx-int8") if REGISTRY[n].unavailable_reason() is None])
def test_eval_throughput(benchmark, variant_dir, name):
    from xopt.tasks import demo

    suite = demo.load_suite(demo.ensure_suite())
    call, timer, m = _Eval(load_variant(variant_dir(name)), suite), Timer(), Measurement()
    warm(call, [None], timer, m, fixed=1)
    timed_loop(call, [None], [0], timer, m, min_iters=3, min_time_s=0.0, max_time_s=120.0)
    med_s = sorted(m.samples_ms)[len(m.samples_ms) // 2] / 1e3
    to_pytest_benchmark(benchmark, m, variant=name, examples=call.examples, examples_per_s=call.examples / med_s,
                        loadavg=os.getloadavg())
    assert call.examples > 0

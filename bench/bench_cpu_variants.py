"""CPU variants of e5-small at batch 1 x 128 tokens and batch 8 of the demo suite's real length mix.

    python -m pytest bench/bench_cpu_variants.py --benchmark-json=bench.json

Each benchmark is xopt.measure's measurement of the variant's `Runner.run` (prepared inputs,
cold call and warm-up apart, one variant per benchmark), so a regression here is a
regression of what `xopt bench` reports.
"""

import numpy as np
import pytest

from xopt.scenarios.fixed_batch import Shape
from xopt.scenarios.lengths import demo_lengths
from xopt.variants import REGISTRY, load_variant

CPU = [v.name for v in REGISTRY.values() if v.device == "cpu" and v.unavailable_reason() is None]


@pytest.fixture(scope="session")
def demo_mix(variant_dir):
    from xopt.tasks import demo

    lv = load_variant(variant_dir("fp32"))
    return demo_lengths(lv.tokenizer(), demo.load_suite(demo.ensure_suite()), None, lv.card.input_prefix)


@pytest.mark.parametrize("shape", ["b1xs128", "b8xdemo"])
@pytest.mark.parametrize("name", CPU)
def test_cpu_variant(measure, variant_dir, demo_mix, name, shape):
    lv = load_variant(variant_dir(name))
    batch = int(shape[1:shape.index("x")])
    sh = Shape(batch, seq_len=128) if shape.endswith("s128") else Shape(batch, lengths=demo_mix, source="demo")
    m = measure(lv.runner, sh, 250002, 1, variant=name)
    assert len(m.samples_ms) >= 9 and np.isfinite(m.samples_ms).all()   # >= 3 per round even when slow
    ids, mask = sh.batches(250002, 1)[0]
    assert np.isfinite(lv.runner(ids, mask)["sentence_embedding"]).all()

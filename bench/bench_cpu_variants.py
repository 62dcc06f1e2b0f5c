"""CPU variants at batch 1 x 128 tokens on the demo model: a pytest-benchmark regression suite.

    python -m pytest bench/bench_cpu_variants.py --benchmark-json=bench.json

Each benchmark times the variant's `Runner.run` on prepared inputs (the same call `xopt bench`
times), so regressions here are regressions of what users measure.
"""

import numpy as np
import pytest

from xopt.bench import Shape
from xopt.variants import REGISTRY, compile_variant, load_variant

CPU = [v.name for v in REGISTRY.values() if v.device == "cpu" and v.unavailable_reason() is None]


@pytest.fixture(scope="session")
def variant_dirs(tmp_path_factory):
    from xopt.pipeline import cached_e5

    ckpt = cached_e5()
    root = tmp_path_factory.mktemp("bench-variants")
    return {n: compile_variant(ckpt, n, root / n, options={"calib_samples": 64}
                               if REGISTRY[n].calibrated else None) and root / n for n in CPU}


@pytest.mark.parametrize("name", CPU)
def test_b1_s128(benchmark, name, variant_dirs):
    lv = load_variant(variant_dirs[name])
    ids, mask = Shape(1, seq_len=128).batches(250002, 1)[0]
    x = lv.runner.prepare(ids, mask)
    lv.runner.run(x)  # cold call (compilation) outside the measurement
    benchmark.extra_info["variant"] = name
    benchmark.pedantic(lv.runner.run, args=(x,), rounds=20, warmup_rounds=3, iterations=1)
    assert np.isfinite(lv.runner(ids, mask)["sentence_embedding"]).all()

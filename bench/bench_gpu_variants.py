"""GPU variants (every registered variant whose device is cuda) at batch 1 and 32, 128 tokens.

Skipped, with the reason, where torch sees no CUDA device or no GPU variant is registered
(the registry's own availability check: missing library, compute capability).
"""

import numpy as np
import pytest

from xopt.scenarios.fixed_batch import Shape
from xopt.variants import REGISTRY, load_variant

GPU = [v for v in REGISTRY.values() if v.device == "cuda"]


def _skip_reason(v):
    import torch

    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU (torch sees no CUDA device)"
    return v.unavailable_reason()


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("variant", GPU or [pytest.param(None, marks=pytest.mark.skip(
    reason="no GPU variant is registered in xopt.variants"))], ids=lambda v: v.name if v else "none")
def test_gpu_variant(measure, variant_dir, variant, batch):
    if reason := _skip_reason(variant):
        pytest.skip(reason)
    lv = load_variant(variant_dir(variant.name))
    m = measure(lv.runner, Shape(batch, seq_len=128), 250002, 1, variant=variant.name)
    assert m.peak_mem_kind == "cuda_allocator" and np.isfinite(m.samples_ms).all()

"""GPU: xopt.kernels and the unpadded encoder against HF fp16 eager (pytest-benchmark).

    python -m pytest bench/bench_gpu_kernels.py --benchmark-json=kernels.json

Every case carries the `gpu` marker and skips, with the reason, where torch sees no CUDA GPU or
triton is missing; the module itself imports on any host, so collecting it checks its imports.
Shapes: XLM-R-base and -large (weights from config: speed does not depend on their values),
batch 32 x 128 tokens (nothing to unpad), batch 1 x 128 (latency), and a real length mix
(tokenised demo-suite sentences, batch 32 padded to its longest member as HF pipelines pad).
`extra_info` carries the derived figures: TFLOP/s of the GEMMs and their fraction of the
GPU's dense peak (table below, by device name), tokens/s. Every timed call ends with
`torch.cuda.synchronize()`, so host-side timing covers the GPU work.

Compiled variants (compile-cuda, int8, fp8, trt-*) are benchmarked on variant directories
with `xopt bench DIR.. --compare fp16`; this file measures what only xopt.kernels has.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from xopt import kernels as K
from xopt.scenarios.lengths import length_sources

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
              pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                 reason="needs triton (pip install triton)")]

# dense tensor-core peaks, TFLOP/s (NVIDIA data sheets; H100 SXM5: 989 fp16/bf16, 1979 int8/fp8)
PEAK = {"H100": {"fp16": 989.0, "int8": 1979.0}, "H200": {"fp16": 989.0, "int8": 1979.0},
        "A100": {"fp16": 312.0, "int8": 624.0}, "L4": {"fp16": 121.0, "int8": 242.5}}
MODELS = {"xlmr-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
          "xlmr-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)}


def _peak(kind: str):
    name = torch.cuda.get_device_name()
    return next((p[kind] for k, p in PEAK.items() if k in name), None)


def _timed(benchmark, fn, rounds=50) -> float:
    """Median seconds of `fn`, timed by xopt.measure's Timer (CUDA events after synchronising) and
    loops, the samples handed to pytest-benchmark: no second timing implementation."""
    import numpy as np

    from xopt.measure import Measurement, Timer, timed_loop, to_pytest_benchmark, warm

    class _Call:
        run = staticmethod(lambda _arg: fn())

    timer, m = Timer("cuda"), Measurement()
    warm(_Call, [None], timer, m)   # cold call (Triton compilation, cuBLAS heuristics) + bounded warm-up
    timed_loop(_Call, [None], [0], timer, m, min_iters=rounds, min_time_s=0.0, max_time_s=30.0)
    to_pytest_benchmark(benchmark, m, device=torch.cuda.get_device_name(), cold_ms=m.cold_ms)
    return float(np.median(m.samples_ms)) / 1e3


@pytest.mark.parametrize("impl", ["triton-int8", "torch-int_mm", "fp16-cublas"])
@pytest.mark.parametrize("k,n", [(768, 768), (768, 3072), (3072, 768), (1024, 1024), (1024, 4096), (4096, 1024)])
def test_gemm_b32_s128(benchmark, impl, k, n):
    """One FFN GEMM at 32 x 128 tokens: our int8 kernel (dequant+bias epilogue) vs torch._int_mm vs fp16."""
    m = 32 * 128
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    xq, xs = K.quantize_rows(x)
    wq, ws = K.quantize_weight(w)
    fns = {"triton-int8": lambda: K.int8_linear(xq, xs, wq, ws, b.float(), torch.float16),
           "torch-int_mm": lambda: torch._int_mm(xq, wq.t()),   # [K, N] column-major, as torchao calls it
           "fp16-cublas": lambda: F.linear(x, w, b)}
    med = _timed(benchmark, fns[impl], rounds=200)
    tflops = 2 * m * k * n / (med * 1e12)
    peak = _peak("fp16" if impl.startswith("fp16") else "int8")
    benchmark.extra_info.update({"tflops": round(tflops, 1), "m": m, "k": k, "n": n,
                                 "fraction_of_peak": round(tflops / peak, 3) if peak else None})


def _model(name):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from xopt.modeling import build_module

    cfg = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, pad_token_id=1,
                           attn_implementation="sdpa", **MODELS[name])
    return build_module(XLMRobertaModel(cfg, add_pooling_layer=False).eval()).eval()


def _length_mix() -> list[int]:
    """Token counts of the demo suite's test sentences (all languages), as the e5 tokenizer with
    its "query: " prefix makes them: the length mix `xopt bench --lengths demo` uses."""
    from xopt.importers.e5 import e5_tokenizer

    return length_sources("demo", e5_tokenizer(), "query: ")[0].lengths


@pytest.fixture(scope="module", params=list(MODELS))
def models(request):
    from xopt.kernels.encoder import UnpaddedEncoder

    m = _model(request.param)
    hf = m.to(device="cuda", dtype=torch.float16)
    return request.param, {"hf-fp16": hf,
                           "unpadded": UnpaddedEncoder(hf, dtype=torch.float16, device="cuda"),
                           "unpadded-int8": UnpaddedEncoder(hf, dtype=torch.float16, device="cuda", int8=True,
                                                            keep_fp=r"encoder\.layer\.\d+\.output\.dense$")}


@pytest.mark.parametrize("impl", ["hf-fp16", "unpadded", "unpadded-int8"])
@pytest.mark.parametrize("scenario", ["b32-s128", "b1-s128", "b32-demo-mix"])
def test_encoder(benchmark, models, impl, scenario):
    from xopt.scenarios.fixed_batch import Shape

    name, impls = models
    shape = {"b32-s128": Shape(32, seq_len=128), "b1-s128": Shape(1, seq_len=128),
             "b32-demo-mix": Shape(32, lengths=_length_mix(), source="demo")}[scenario]
    batches = [(torch.from_numpy(i).cuda(), torch.from_numpy(a).cuda()) for i, a in shape.batches(250002, 1, n=8)]
    module = impls[impl]
    it = iter(range(10**9))

    @torch.inference_mode()
    def run():
        ids, mask = batches[next(it) % len(batches)]
        module(ids, mask)

    med = _timed(benchmark, run, rounds=100)
    tokens = sum(int(m.sum()) for _, m in batches) / len(batches)
    benchmark.extra_info.update({"model": name, "scenario": scenario, "impl": impl,
                                 "sequences_per_s_at_batch": round(shape.batch / med, 1),
                                 "real_tokens_per_s": round(tokens / med, 1), "p50_ms": round(med * 1e3, 3)})

"""xopt.kernels: the unpadded encoder's operations, Triton on the GPU, PyTorch elsewhere.

Each op below dispatches on where its input lives:
- CUDA tensor (and `triton` importable): the Triton kernel in `triton_ops.py`;
- CPU tensor with `TRITON_INTERPRET=1` in the environment (and `triton` importable): the same
  Triton kernel run by Triton's interpreter, which is how the tests check the kernels'
  numerics without a GPU (slow: small shapes only);
- otherwise: the PyTorch path written next to it. It computes the same function in the same
  order (fp32 accumulation, the same int8 rounding), so the `unpadded` variants run, and are
  tested end to end, on CPU hosts. It is the reference the kernels are checked against.

`which(x)` says which path an op takes for tensor `x` (recorded in the runner's info).
The encoder built on these ops is `xopt.kernels.encoder.UnpaddedEncoder`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, NamedTuple

_HAVE_TRITON = importlib.util.find_spec("triton") is not None


def which(x) -> str:
    """"triton", "interpret" (Triton's CPU interpreter) or "torch" for an input tensor `x`."""
    if not _HAVE_TRITON:
        return "torch"
    if x.is_cuda:
        return "triton"
    return "interpret" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"


def _triton():
    """The Triton implementations, imported on first use (triton is an optional dependency)."""
    from xopt.kernels import triton_ops

    return triton_ops


def bias_gelu(x, bias):
    """GELU(x + bias), exact (erf) GELU as BERT/XLM-R's `gelu`; x [..., N], bias [N]."""
    path = which(x)
    if path != "torch":
        return _triton().bias_gelu(x.contiguous(), bias, interpret=path == "interpret")
    import torch.nn.functional as F

    return F.gelu(x.float() + bias.float()).to(x.dtype)


def add_layernorm(x, bias, residual, weight, ln_bias, eps: float):
    """LayerNorm(x + bias + residual) over the last axis, statistics in fp32. bias/residual may be None."""
    path = which(x)
    if path != "torch":
        return _triton().add_layernorm(x.contiguous(), bias, None if residual is None else residual.contiguous(),
                                     weight, ln_bias, eps, interpret=path == "interpret")
    import torch.nn.functional as F

    y = x.float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.float()
    return F.layer_norm(y, (x.shape[-1],), weight.float(), ln_bias.float(), eps).to(x.dtype)


def quantize_rows(x):
    """Symmetric per-row (per-token) int8: returns (q int8 [M,K], scale fp32 [M]), x ~ q * scale."""
    path = which(x)
    if path != "torch":
        return _triton().quantize_rows(x.contiguous(), interpret=path == "interpret")
    import torch

    xf = x.float()
    scale = xf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    y = xf / scale[:, None]
    q = (torch.sign(y) * torch.floor(y.abs() + 0.5)).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_static(x, scale):
    """int8 with one calibrated scale (fp32 tensor of one element): q = round(x / scale), clipped.
    Returns (q, scale per row) in the form `int8_linear` takes."""
    path = which(x)
    if path != "torch":
        q = _triton().quantize_static(x.contiguous(), scale, interpret=path == "interpret")
    else:
        import torch

        y = x.float() / scale
        q = (torch.sign(y) * torch.floor(y.abs() + 0.5)).clamp(-127, 127).to(torch.int8)
    return q, scale.expand(x.shape[0])


def quantize_weight(w):
    """Symmetric per-output-channel int8 weights: (w_q int8 [N,K], scale fp32 [N])."""
    import torch

    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    return torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def int8_linear(a_q, a_scale, w_q, w_scale, bias, out_dtype, gelu: bool = False):
    """(a_q @ w_q^T) in int32, then * a_scale[M] * w_scale[N] (+ bias) (-> GELU), stored as out_dtype."""
    path = which(a_q)
    if path != "torch":
        return _triton().int8_gemm(a_q.contiguous(), a_scale, w_q, w_scale, bias, out_dtype, gelu=gelu,
                                   interpret=path == "interpret")
    import torch.nn.functional as F

    # int8 x int8 products summed exactly in float64: every partial sum is an integer below
    # 2^53, so the result equals an int32 accumulator's, and a float64 matmul is much faster
    # on CPU than torch._int_mm's CPU kernel. On CUDA the Triton kernel runs instead.
    acc = a_q.double() @ w_q.double().t()
    y = acc.float() * a_scale[:, None] * w_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    if gelu:
        y = F.gelu(y)
    return y.to(out_dtype)


# ---------------------------------------------------------------- benchmark cases

class BenchCase(NamedTuple):
    """One op at one shape for bench/bench_kernels.py: `fn(make_args())` is what is timed, on
    `device` ("cuda" cases skip, with the reason, where torch sees no GPU)."""

    name: str
    device: str
    fn: Callable
    make_args: Callable


# XLM-R-base at batch 32 x 128 tokens: 4096 token rows, hidden 768, FFN 3072. The CPU cases use
# 256 rows so that the PyTorch reference path stays quick on a small host.
_XLMR_BASE = (32 * 128, 768, 3072)
_CPU_SMALL = (256, 768, 3072)


def _make_row(device: str, rows: int, width: int):
    def make():
        import torch

        g = torch.Generator().manual_seed(0)
        dtype = torch.float16 if device == "cuda" else torch.float32
        x = torch.randn(rows, width, generator=g).to(device, dtype)
        return x, torch.randn(width, generator=g).to(device, dtype), torch.ones(width, device=device, dtype=dtype)
    return make


def _make_gemm(device: str, rows: int, k: int, n: int):
    def make():
        import torch

        g = torch.Generator().manual_seed(0)
        x = torch.randn(rows, k, generator=g).to(device)
        w = torch.randn(n, k, generator=g).to(device)
        a_q, a_s = quantize_rows(x)
        w_q, w_s = quantize_weight(w)
        out = torch.float16 if device == "cuda" else torch.float32
        return a_q, a_s, w_q, w_s, torch.zeros(n, device=device), out
    return make


def _bench_cases() -> list[BenchCase]:
    cases = []
    for device, (rows, hidden, ffn) in (("cuda", _XLMR_BASE), ("cpu", _CPU_SMALL)):
        sfx = "" if device == "cuda" else "-cpu"
        shape = f"{rows}x{hidden}"
        cases += [
            BenchCase(f"bias_gelu-{rows}x{ffn}{sfx}", device, lambda a: bias_gelu(a[0], a[1]),
                      _make_row(device, rows, ffn)),
            BenchCase(f"add_layernorm-{shape}{sfx}", device,
                      lambda a: add_layernorm(a[0], a[1], a[0], a[2], a[1], 1e-5), _make_row(device, rows, hidden)),
            BenchCase(f"quantize_rows-{shape}{sfx}", device, lambda a: quantize_rows(a[0]),
                      _make_row(device, rows, hidden)),
            BenchCase(f"int8_linear-{shape}to{ffn}{sfx}", device, lambda a: int8_linear(*a),
                      _make_gemm(device, rows, hidden, ffn)),
            BenchCase(f"int8_linear-{rows}x{ffn}to{hidden}{sfx}", device, lambda a: int8_linear(*a),
                      _make_gemm(device, rows, ffn, hidden)),
        ]
    return cases


BENCH_CASES: list[BenchCase] = _bench_cases()

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

_HAVE_TRITON = importlib.util.find_spec("triton") is not None


def which(x) -> str:
    """"triton", "interpret" (Triton's CPU interpreter) or "torch" for an input tensor `x`."""
    if not _HAVE_TRITON:
        return "torch"
    if x.is_cuda:
        return "triton"
    return "interpret" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"


def _ops(x):
    from xopt.kernels import triton_ops

    return triton_ops


def bias_gelu(x, bias):
    """GELU(x + bias), exact (erf) GELU as BERT/XLM-R's `gelu`; x [..., N], bias [N]."""
    path = which(x)
    if path != "torch":
        return _ops(x).bias_gelu(x.contiguous(), bias, interpret=path == "interpret")
    import torch.nn.functional as F

    return F.gelu(x.float() + bias.float()).to(x.dtype)


def add_layernorm(x, bias, residual, weight, ln_bias, eps: float):
    """LayerNorm(x + bias + residual) over the last axis, statistics in fp32. bias/residual may be None."""
    path = which(x)
    if path != "torch":
        return _ops(x).add_layernorm(x.contiguous(), bias, None if residual is None else residual.contiguous(),
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
        return _ops(x).quantize_rows(x.contiguous(), interpret=path == "interpret")
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
        q = _ops(x).quantize_static(x.contiguous(), scale, interpret=path == "interpret")
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
        return _ops(a_q).int8_gemm(a_q.contiguous(), a_scale, w_q, w_scale, bias, out_dtype, gelu=gelu,
                                   interpret=path == "interpret")
    import torch.nn.functional as F

    # int8 x int8 products summed exactly: in float64 (integers below 2^53, so the same numbers
    # as an int32 accumulator) because torch._int_mm's CPU kernel is ~18x slower than an fp32
    # matmul (1432 vs 79 ms for 1024x384 @ 384x1536, torch 2.13, shared 2-core host); float64
    # is exact and 7x faster than _int_mm here (210 ms). On CUDA the Triton kernel runs instead.
    acc = a_q.double() @ w_q.double().t()
    y = acc.float() * a_scale[:, None] * w_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    if gelu:
        y = F.gelu(y)
    return y.to(out_dtype)

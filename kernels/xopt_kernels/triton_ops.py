"""Triton kernels of the unpadded encoder (`xopt.kernels`): fused bias+GELU, bias+residual+
LayerNorm, per-token int8 quantisation and an int8 GEMM with a fused dequant/bias/GELU epilogue.

The kernel bodies are plain functions; `kernels(interpret)` decorates them with `triton.jit`
once per mode, because Triton decides at decoration time whether a kernel is compiled for
the GPU or run by its interpreter (`TRITON_INTERPRET=1`, numpy on the CPU: how the tests
check the numerics on hosts without a GPU). Callers use the wrappers in `xopt.kernels`.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import triton
import triton.language as tl

# Only builtins inside the kernels. Row reductions go through `tl.reduce` with tl.standard's own combine functions (what tl.sum
# and tl.max call), not through tl.sum/tl.max themselves: those are @jit library functions whose
# mode (compiled or interpreted) is fixed when `triton` is first imported, and in a process
# that imports it before TRITON_INTERPRET is set (torch.compile does) the interpreter cannot
# call them. The interpreter recognises these combine functions and reduces with numpy.
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max


def _bias_gelu(x_ptr, b_ptr, y_ptr, numel, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % N, mask=m, other=0.0).to(tl.float32)
    x = x + b
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))   # exact GELU, as BERT's "gelu"
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def _add_layernorm(x_ptr, b_ptr, r_ptr, w_ptr, lb_ptr, y_ptr, M, N, eps,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    m = (rows[:, None] < M) & (cols[None, :] < N)
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        x += tl.load(r_ptr + off, mask=m, other=0.0).to(tl.float32)
    mean = tl.reduce(x, 1, _SUM) / N
    d = tl.where(m, x - mean[:, None], 0.0)
    var = tl.reduce(d * d, 1, _SUM) / N
    y = d / tl.sqrt(var + eps)[:, None]
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    lb = tl.load(lb_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + off, (y * w[None, :] + lb[None, :]).to(y_ptr.dtype.element_ty), mask=m)


def _quantize_rows(x_ptr, q_ptr, s_ptr, M, K, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Symmetric per-row (per-token) int8: scale = amax / 127, q = round half away from zero."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    m = (rows[:, None] < M) & (cols[None, :] < K)
    off = rows[:, None] * K + cols[None, :]
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.reduce(tl.abs(x), 1, _MAX), 1e-8) / 127.0
    y = x / scale[:, None]
    q = tl.where(y >= 0, tl.floor(y + 0.5), -tl.floor(-y + 0.5))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(q_ptr + off, q.to(tl.int8), mask=m)
    tl.store(s_ptr + rows, scale, mask=rows < M)


def _quantize_static(x_ptr, q_ptr, s_ptr, numel, BLOCK: tl.constexpr):
    """int8 with one calibrated scale for the whole tensor (static activation quantisation)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    y = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32) / tl.load(s_ptr)
    q = tl.where(y >= 0, tl.floor(y + 0.5), -tl.floor(-y + 0.5))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=m)


def _int8_gemm(a_ptr, w_ptr, as_ptr, ws_ptr, b_ptr, c_ptr, M, N, K,
               HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C[M,N] = (A_q[M,K] @ W_q[N,K]^T) * a_scale[M] * w_scale[N] (+ bias[N]) (-> GELU).

    int8 x int8 products accumulate in int32 (tensor-core IMMA on sm_80+); the dequantisation,
    bias and activation run on the accumulator before the single store."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.full((BM, BN), 0, dtype=tl.int32)     # tl.full, not tl.zeros: see _SUM above
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        w = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)
        acc += tl.dot(a, w)
    sa = tl.load(as_ptr + rm, mask=rm < M, other=0.0)
    sw = tl.load(ws_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], y.to(c_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@functools.cache
def kernels(interpret: bool) -> SimpleNamespace:
    """The kernels, jitted for the GPU (`interpret=False`) or for Triton's CPU interpreter."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return SimpleNamespace(bias_gelu=triton.jit(_bias_gelu), add_layernorm=triton.jit(_add_layernorm),
                               quantize_rows=triton.jit(_quantize_rows),
                               quantize_static=triton.jit(_quantize_static), int8_gemm=triton.jit(_int8_gemm))
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


# Launch configurations: one place, used by the wrappers below and by `compile_for_gpu`.
ELEMENTWISE_BLOCK = 1024     # elements per program of bias_gelu and quantize_static


def _row_tiles(m: int, n: int, interpret: bool) -> dict:
    """ROWS/BLOCK of the row-wise kernels for M rows of N: a row in one power-of-2 block;
    ~4K elements a program on the GPU (4 rows of XLM-R-base's 768); every row in one program for
    the interpreter, whose cost is per program."""
    block = triton.next_power_of_2(n)
    return {"ROWS": triton.next_power_of_2(max(m, 1)) if interpret else max(1, 4096 // block), "BLOCK": block}


def bias_gelu(x, bias, interpret=False):
    y = x.new_empty(x.shape)
    n = x.numel()
    kernels(interpret).bias_gelu[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](x, bias, y, n, x.shape[-1],
                                                                       BLOCK=ELEMENTWISE_BLOCK)
    return y


def add_layernorm(x, bias, residual, weight, ln_bias, eps, interpret=False):
    n = x.shape[-1]
    y = x.new_empty(x.shape)
    m = x.numel() // n
    tiles = _row_tiles(m, n, interpret)
    if m:
        kernels(interpret).add_layernorm[(triton.cdiv(m, tiles["ROWS"]),)](
            x, bias if bias is not None else x, residual if residual is not None else x, weight, ln_bias, y, m, n,
            eps, HAS_BIAS=bias is not None, HAS_RES=residual is not None, **tiles)
    return y


def quantize_rows(x, interpret=False):
    import torch

    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    tiles = _row_tiles(m, k, interpret)
    if m:
        kernels(interpret).quantize_rows[(triton.cdiv(m, tiles["ROWS"]),)](x, q, s, m, k, **tiles)
    return q, s


def quantize_static(x, scale, interpret=False):
    import torch

    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    n = x.numel()
    if n:
        kernels(interpret).quantize_static[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](x, q, scale, n,
                                                                                 BLOCK=ELEMENTWISE_BLOCK)
    return q


def _gemm_tiles(m: int, interpret: bool) -> tuple[dict, dict]:
    """(constexpr tiles, launch options) of the int8 GEMM for M rows.

    16 is the smallest int8 tensor-core tile and keeps the interpreter fast; on the GPU,
    128x128x64 tiles (8 warps, 3 stages; 64 rows, 4 warps for small M) are the usual int8 IMMA
    starting point, not tuned per GPU: bench/bench_gpu_kernels.py's GEMM cases time them against
    torch._int_mm and cuBLAS fp16, and `compile_for_gpu` shows they compile to tensor-core IMMA
    without register spills."""
    if interpret:
        return {"BM": 16, "BN": 16, "BK": 16}, {}
    bm = 64 if m <= 64 else 128
    return {"BM": bm, "BN": 128, "BK": 64}, {"num_warps": 8 if bm == 128 else 4, "num_stages": 3}


def int8_gemm(a_q, a_scale, w_q, w_scale, bias, out_dtype, gelu=False, interpret=False):
    import torch

    m, k = a_q.shape
    n = w_q.shape[0]
    a_scale, w_scale = a_scale.contiguous(), w_scale.contiguous()   # an expanded (stride-0) scale is not
    c = torch.empty((m, n), dtype=out_dtype, device=a_q.device)
    if m == 0:
        return c
    tiles, extra = _gemm_tiles(m, interpret)
    grid = (triton.cdiv(m, tiles["BM"]), triton.cdiv(n, tiles["BN"]))
    kernels(interpret).int8_gemm[grid](a_q, w_q, a_scale, w_scale, bias if bias is not None else a_scale, c,
                                       m, n, k, HAS_BIAS=bias is not None, GELU=gelu, **tiles, **extra)
    return c


# ----------------------------------------------------------------------------- without a GPU

SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}   # max dynamic smem per block


def compile_for_gpu(arch: int, dtype: str = "fp16", tokens: int = 4096, hidden: int = 768, ffn: int = 3072) -> dict:
    """Compile every kernel ahead of time for CUDA compute capability `arch` (80 = A100,
    89 = L4/L40, 90 = H100) with the launch configuration the wrappers above pick for `tokens`
    packed tokens of an encoder `hidden` wide with an `ffn`-wide feed-forward layer. Needs no
    GPU: Triton's compiler and the ptxas/cuobjdump in its wheel do it all, so a host without a
    GPU can check that the GPU path compiles, which tensor-core instructions the int8 GEMM
    lowers to, and what each kernel takes in registers, spill stack and shared memory.

    Arguments are specialised as Triton's JIT does at a real launch: pointers from PyTorch's
    allocator are 16-byte aligned and integers divisible by 16 are marked so (they decide
    vector widths and cp.async pipelining). Returns {kernel: {"ptx", "regs", "stack", "shared"}}."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    ks = kernels(False)
    f, i8, f32 = f"*{dtype}", "*i8", "*fp32"
    gemm = {"a_ptr": i8, "w_ptr": i8, "as_ptr": f32, "ws_ptr": f32, "b_ptr": f, "c_ptr": f}
    jobs = {   # name: (kernel, {arg: pointer type or a representative value}, constexprs, options)
        "bias_gelu": (ks.bias_gelu, {"x_ptr": f, "b_ptr": f, "y_ptr": f, "numel": tokens * ffn, "N": ffn},
                      {"BLOCK": ELEMENTWISE_BLOCK}, {}),
        "add_layernorm": (ks.add_layernorm, {"x_ptr": f, "b_ptr": f, "r_ptr": f, "w_ptr": f, "lb_ptr": f, "y_ptr": f,
                                             "M": tokens, "N": hidden, "eps": 1e-5},
                          {"HAS_BIAS": True, "HAS_RES": True, **_row_tiles(tokens, hidden, False)}, {}),
        "quantize_rows": (ks.quantize_rows, {"x_ptr": f, "q_ptr": i8, "s_ptr": f32, "M": tokens, "K": ffn},
                          _row_tiles(tokens, ffn, False), {}),
        "quantize_static": (ks.quantize_static, {"x_ptr": f, "q_ptr": i8, "s_ptr": f32, "numel": tokens * ffn},
                            {"BLOCK": ELEMENTWISE_BLOCK}, {}),
    }
    for m in (min(tokens, 64), tokens):                      # both tile shapes the GEMM picks
        tiles, opts = _gemm_tiles(m, False)
        jobs[f"int8_gemm[BM={tiles['BM']}]"] = (ks.int8_gemm, {**gemm, "M": m, "N": ffn, "K": hidden},
                                                {"HAS_BIAS": True, "GELU": True, **tiles}, opts)
    out = {}
    for name, (fn, args, consts, opts) in jobs.items():
        sig, attrs, cx = {}, {}, {}
        for i, a in enumerate(fn.arg_names):
            if a in consts:
                sig[a], cx[(i,)] = "constexpr", consts[a]
                continue
            v = args[a]
            sig[a] = v if isinstance(v, str) else "fp32" if isinstance(v, float) else "i32"
            if isinstance(v, str) or (isinstance(v, int) and v % 16 == 0):   # aligned pointer / int
                attrs[(i,)] = [["tt.divisibility", 16]]
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32), options=opts)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(c.asm["cubin"])
            fh.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", fh.name], capture_output=True, text=True,
                                   check=True).stdout
        regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
        out[name] = {"ptx": c.asm["ptx"], "regs": int(regs), "stack": int(stack), "shared": c.metadata.shared}
    return out


if __name__ == "__main__":   # python -m xopt.kernels.triton_ops [ARCH [DTYPE]]: resource use per kernel
    import sys

    arch_, dtype_ = int(sys.argv[1]) if len(sys.argv) > 1 else 90, sys.argv[2] if len(sys.argv) > 2 else "fp16"
    for k_, r_ in compile_for_gpu(arch_, dtype_).items():
        print(f"sm_{arch_} {dtype_} {k_:22s} regs {r_['regs']:3d}  spill stack {r_['stack']:4d} B  "
              f"shared {r_['shared']:6d} B")

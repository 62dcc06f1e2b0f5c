"""Unpadded execution with xopt's own kernels: `unpadded` and `unpadded-int8`.

Recipe (both): the checkpoint's safetensors (hard-linked; the manifest pins their hash) are
loaded into the HF encoder, whose weights `xopt.kernels.encoder.UnpaddedEncoder` takes over:
each batch is packed without its padding (cu_seqlens), Q/K/V run as one GEMM, attention is
variable-length (FlashAttention varlen on CUDA, SDPA per sentence on CPU), bias+GELU and
bias+residual+LayerNorm are fused Triton kernels on CUDA.

- `unpadded`: fp16 on CUDA (LayerNorm statistics and pooling in fp32), fp32 on CPU.
- `unpadded-int8`: W8A8 — int8 weights per output channel (quantised when loaded: the
  rounding is deterministic, so the manifest's weight hash still pins the result), int8
  activations per token computed on the fly, int8 GEMMs with dequant/bias/GELU fused in the
  epilogue (Triton on CUDA; exact float64 products on CPU). Linears matched by `keep_fp32` stay in the
  float dtype: by default the FFN output projections, as in every xopt int8 recipe (their
  input is GELU's output, the activation with the widest range).

- `unpadded-int8-static`: as `unpadded-int8` with static activation scales: one int8 range
  per Linear input from the calibration profile of `xopt.calibration` (saved in the variant
  directory at build time, checked against the weights at load), no per-call reduction.

The device is chosen when loading (registry device "auto"; option `device: auto` = CUDA when
torch sees one), so the same variant directory runs on a CPU host (the documented PyTorch path
of `xopt.kernels`, tested against fp32) and on a GPU (Triton kernels). The runner's `info` and
`device` record which ran. Being "auto" rather than "cpu" keeps them out of the CPU-only demo
and its budget: on a CPU their attention is a per-sentence loop, a correctness path.
"""

from __future__ import annotations

import time

from xopt.variants.base import Variant, output_names
from xopt.variants.eager import TorchRunner, _build_weights, _module


PROFILE_FILE = "calibration_profile.json"


def _build_static(variant, ckpt, out, options) -> dict:
    import re

    from xopt.calibration.run import calibrate_checkpoint
    from xopt.errors import XoptError

    if options.get("keep_fp16") is not None or options.get("max_drop") is not None:
        raise XoptError("unpadded-int8-static does not take a sensitivity fallback (keep_fp16/max_drop); "
                        "use keep_fp32 to leave Linears unquantised")
    _build_weights(variant, ckpt, out, options)
    keep = re.compile(options["keep_fp32"]) if options.get("keep_fp32") else None
    prof, _ = calibrate_checkpoint(ckpt, options, quantized=lambda n: not (keep and keep.search(n)))
    prof.save(out / PROFILE_FILE)
    return {"calibration": prof.identity()}


def _load(variant, directory, man):
    import torch

    from xopt import kernels
    from xopt.errors import XoptError
    from xopt.kernels.encoder import UnpaddedEncoder

    opts = man["options"]
    device = opts.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise XoptError(f"{directory}: variant {variant.name} was built to run on CUDA (option device=cuda) "
                        "but torch sees no GPU; run it on a GPU host or rebuild it with options device=auto")
    dtype = {"cuda": torch.float16, "cpu": torch.float32}[device] if opts.get("dtype", "auto") == "auto" \
        else getattr(torch, opts["dtype"])
    t0 = time.perf_counter()
    module = _module(directory, man)
    act_amax = None
    if variant.calibrated:
        from xopt.calibration.profile import Profile

        prof = Profile.load(directory / PROFILE_FILE)
        prof.check(module, str(directory / PROFILE_FILE))
        act_amax = {n: e["amax"] for n, e in prof.activations.items()}
    enc = UnpaddedEncoder(module, dtype=dtype, device=device, int8=variant.precision == "int8",
                          keep_fp=opts.get("keep_fp32", ""), act_amax=act_amax)
    runner = TorchRunner(variant.name, enc, output_names(man), device=device)
    probe = torch.empty(0, device=device)
    runner.info = {"device": device, "dtype": str(dtype).removeprefix("torch."), "kernels": kernels.which(probe),
                   "quantized_linears": len(enc.quantized), "load_s": round(time.perf_counter() - t0, 3)}
    return runner


VARIANTS = [
    Variant("unpadded", backend="xopt.kernels", precision="fp16", device="auto",
            description="packed tokens without padding, varlen attention, fused Triton kernels "
                        "(fp16 on CUDA; fp32 PyTorch path on CPU)",
            build=_build_weights, load=_load, options={"device": "auto", "dtype": "auto"}),
    Variant("unpadded-int8", backend="xopt.kernels", precision="int8", device="auto",
            description="unpadded + W8A8: int8 per-channel weights, per-token int8 activations, int8 GEMM "
                        "with fused dequant/bias/GELU (Triton on CUDA; exact float64 products on CPU)",
            build=_build_weights, load=_load,
            options={"device": "auto", "dtype": "auto", "keep_fp32": r"encoder\.layer\.\d+\.output\.dense$"}),
    Variant("unpadded-int8-static", backend="xopt.kernels", precision="int8", device="auto",
            description="unpadded-int8 with static activation scales calibrated by xopt.calibration",
            build=_build_static, load=_load, calibrated=True,
            options={"device": "auto", "dtype": "auto", "keep_fp32": r"encoder\.layer\.\d+\.output\.dense$",
                     "calib_method": "percentile", "calib_langs": "all", "calib_samples": 256}),
]

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
  epilogue (Triton on CUDA; exact float64 products on CPU). Linears matched by the `keep` policy
  stay in the float dtype: by default the FFN output projections, as in every xopt int8 recipe
  (their input is GELU's output, the activation with the widest range). The head is never
  quantised by these kernels.

- `unpadded-int8-static`: as `unpadded-int8` with static activation scales: one int8 range
  per Linear input from the calibration profile of `xopt.calibration` (saved in the variant
  directory at build time, checked against the weights at load), no per-call reduction.

Configs: `UnpaddedConfig` (device, dtype), `UnpaddedInt8Config` (+ keep),
`UnpaddedStaticInt8Config` (+ calibration options; no sensitivity fallback: the kernels take
one keep pattern).

The device is chosen when loading (registry device "auto"; option `device: auto` = CUDA when
torch sees one), so the same variant directory runs on a CPU host (the documented PyTorch path
of `xopt.kernels`, tested against fp32) and on a GPU (Triton kernels). The runner's `info` and
`device` record which ran. Being "auto" rather than "cpu" keeps them out of the CPU-only demo
and its budget: on a CPU their attention is a per-sentence loop, a correctness path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from xopt.errors import XoptError
from xopt.variants.base import (CALIB_METHOD_HELP, FFN_OUT, PROFILE_FILE, CalibratedConfig, KeepPolicy, Variant,
                                VariantConfig, check_quantized, option, output_names, quantized_ops_record)
from xopt.variants.eager import TorchRunner, build_weights, variant_module

KEEP_HELP = "regex of Linear module names left in the float dtype ('' quantises every encoder Linear)"


@dataclass(frozen=True)
class UnpaddedConfig(VariantConfig):
    """Float kernels. `encoder_options` is what each config asks of `UnpaddedEncoder`."""

    device: str = option("auto", "str", "auto (CUDA when torch sees one), cuda or cpu")
    dtype: str = option("auto", "str", "auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32")

    def check(self, who: str) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise XoptError(f"{who}: device {self.device!r}: use auto, cuda or cpu")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise XoptError(f"{who}: dtype {self.dtype!r}: use auto, float16, bfloat16 or float32")

    def encoder_options(self, directory, module) -> dict:
        """`UnpaddedEncoder`'s int8, keep_fp and act_amax for this recipe."""
        return {"int8": False, "keep_fp": "", "act_amax": None}


@dataclass(frozen=True)
class UnpaddedInt8Config(UnpaddedConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT, "float"), "keep", KEEP_HELP)

    def encoder_options(self, directory, module) -> dict:
        return {"int8": True, "keep_fp": self.keep.pattern, "act_amax": None}


@dataclass(frozen=True)
class UnpaddedStaticInt8Config(CalibratedConfig, UnpaddedInt8Config):
    """Calibrated static scales; no sensitivity fallback (the kernels take one keep pattern)."""

    calib_method: str = option("percentile", "str", CALIB_METHOD_HELP)

    def encoder_options(self, directory, module) -> dict:
        """int8 with the activation ranges of the profile saved at build time (checked against the weights)."""
        from xopt.calibration.profile import Profile

        prof = Profile.load(directory / PROFILE_FILE)
        prof.check(module, str(directory / PROFILE_FILE))
        return {**super().encoder_options(directory, module),
                "act_amax": {n: e["amax"] for n, e in prof.activations.items()}}


def _build_static(variant, ckpt, out, config: UnpaddedStaticInt8Config, exports=None) -> dict:
    from xopt.calibration.run import calibrate_checkpoint

    build_weights(variant, ckpt, out, config)
    prof, _ = calibrate_checkpoint(ckpt, config, quantized=config.keep.quantizes)
    prof.save(out / PROFILE_FILE)
    return {"calibration": prof.identity()}


def _load(variant, directory, man, config: UnpaddedConfig):
    import torch

    from xopt import kernels
    from xopt.kernels.encoder import UnpaddedEncoder

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise XoptError(f"{directory}: variant {variant.name} was built to run on CUDA (option device=cuda) "
                        "but torch sees no GPU; run it on a GPU host or rebuild it with options device=auto")
    dtype = {"cuda": torch.float16, "cpu": torch.float32}[device] if config.dtype == "auto" \
        else getattr(torch, config.dtype)
    t0 = time.perf_counter()
    module = variant_module(directory, man)
    opts = config.encoder_options(directory, module)
    enc = UnpaddedEncoder(module, dtype=dtype, device=device, **opts)
    probe = torch.empty(0, device=device)
    quantized, kept = enc.int8_linears()
    counted = {}
    if opts["int8"]:      # counted from the int8 weights in place, not from the keep pattern
        counted = {"quantized_ops": quantized_ops_record({"xopt.kernels.int8_linear": len(quantized)}), "kept": kept}
        check_quantized(variant.name, variant.precision, counted["quantized_ops"])
    return TorchRunner(variant.name, enc, output_names(man), device=device, info={
        "device": device, "dtype": str(dtype).removeprefix("torch."), "kernels": kernels.which(probe),
        "quantized_linears": len(quantized), **counted, "load_s": round(time.perf_counter() - t0, 3)})


VARIANTS = [
    Variant("unpadded", backend="xopt.kernels", precision="fp16", device="auto",
            description="packed tokens without padding, varlen attention, fused Triton kernels "
                        "(fp16 on CUDA; fp32 PyTorch path on CPU)",
            build=build_weights, load=_load, config=UnpaddedConfig()),
    Variant("unpadded-int8", backend="xopt.kernels", precision="int8", device="auto",
            description="unpadded + W8A8: int8 per-channel weights, per-token int8 activations, int8 GEMM "
                        "with fused dequant/bias/GELU (Triton on CUDA; exact float64 products on CPU)",
            build=build_weights, load=_load, config=UnpaddedInt8Config(),
            activation_scales="dynamic per token"),
    Variant("unpadded-int8-static", backend="xopt.kernels", precision="int8", device="auto",
            description="unpadded-int8 with static activation scales calibrated by xopt.calibration",
            build=_build_static, load=_load, config=UnpaddedStaticInt8Config(),
            activation_scales="static"),
]

"""PyTorch variants on an NVIDIA GPU: `fp16`, `bf16`, `compile-cuda`, `int8`, `fp8`, `bnb-int8`.

All keep the checkpoint's safetensors (hard-linked; the manifest pins their hash) and apply
their recipe when loaded, on the GPU. Loading one on a host without CUDA fails in
`load_variant` with one line (`Variant.unavailable_reason`).

- `fp16`, `bf16`: the HF encoder (SDPA attention) cast to half precision; pooling and
  LayerNorm in the module's own dtype, as HF runs them.
- `compile-cuda`: `fp16` under `torch.compile(mode="max-autotune")`: inductor with GEMM
  autotuning and CUDA graphs. CUDA graphs need fixed shapes, so every batch is padded up to a
  shape bucket (batch to the next of `batch_buckets`, length to a multiple of `seq_multiple`)
  and the outputs cut back: padding does not change a row's result (masked attention, masked
  mean pooling; per-token outputs are sliced). One graph per bucket, compiled on first use;
  `info["buckets"]` counts them. (The CPU `compile` variant, dynamic shapes, stays.)
- `int8`: W8A8 through torchao (`Int8DynamicActivationInt8WeightConfig`): int8 weights per
  output channel, int8 activations per token computed on the fly, int8 tensor-core GEMMs
  (`torch._int_mm`) — compiled with the same buckets, which is how torchao gets its speed
  (eager torchao int8 is slower than fp16). LayerNorm and softmax stay fp16. Linears matched by
  the `keep` policy (FFN output projections and the head, as every xopt int8 recipe) stay fp16.
- `int8-smooth`: `int8` after SmoothQuant (Xiao et al. 2023): per-input-channel factors s from
  calibration (`xopt.calibration`: activation channel maxima on a multilingual sample, alpha
  chosen on a held-out sample) move activation outliers into the weights, W[:, j] * s_j, x / s.
  The profile (factors and ranges) is saved in the variant directory at build time and checked
  against the weights when loaded.
- `fp8`: e4m3 weights and activations, per-row scales, `torch._scaled_mm` (torchao
  `Float8DynamicActivationFloat8WeightConfig`, PerRow); compute capability 8.9+ (Ada, Hopper).
- `bnb-int8`: bitsandbytes LLM.int8 (`Linear8bitLt`, outlier threshold 6.0): the baseline many
  users try first, benchmarked beside the others rather than assumed good (its mixed
  int8/fp16 decomposition can be slower than fp16 at encoder batch sizes).

Configs: `HalfConfig` (fp16, bf16: no options), `CompileCudaConfig`, `TorchaoConfig` (int8),
`Fp8Config` (kept layers in bf16), `SmoothTorchaoConfig` (int8-smooth: + calibration options),
`BnbConfig`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np

from xopt.errors import XoptError
from xopt.variants.base import (CALIB_METHOD_HELP, FFN_OUT_AND_HEAD, PROFILE_FILE, CalibratedConfig, KeepPolicy,
                                Variant, VariantConfig, check_quantized, option, output_names, torch_quantized_ops)
from xopt.variants.eager import TorchRunner, build_weights, variant_module

KEEP_HELP = "regex of Linear module names left in the float dtype ('' quantises every Linear)"


@dataclass(frozen=True)
class HalfConfig(VariantConfig):
    """fp16, bf16: no options."""


@dataclass(frozen=True)
class CompileCudaConfig(VariantConfig):
    mode: str = option("max-autotune", "str", "torch.compile mode")
    batch_buckets: str = option("1,2,4,8,16,32,64,128", "str", "batch sizes every batch is padded up to")
    seq_multiple: int = option(32, "int", "sequence lengths are padded up to a multiple of this")

    def check(self, who: str) -> None:
        super().check(who)
        try:
            buckets = [int(x) for x in self.batch_buckets.split(",")]
        except ValueError:
            buckets = []
        if not buckets or min(buckets) <= 0:
            raise XoptError(f"{who}: batch_buckets {self.batch_buckets!r}: give a comma list of positive integers")
        if self.seq_multiple <= 0:
            raise XoptError(f"{who}: seq_multiple must be positive")

    @property
    def buckets(self) -> list[int]:
        return [int(x) for x in self.batch_buckets.split(",")]


@dataclass(frozen=True)
class TorchaoConfig(CompileCudaConfig):
    """torchao W8A8: the module runs in `DTYPE`, `torchao_config` is what `quantize_` applies,
    `float_module` the module it applies it to. Each torchao recipe's config class says its own."""

    DTYPE: ClassVar[str] = "float16"

    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp16"), "keep", KEEP_HELP)
    compile: bool = option(True, "bool", "compile per shape bucket (false: eager torchao, slower)")

    def torchao_config(self):
        from xopt.quiet import quiet_imports

        with quiet_imports():         # torchao logs its C-extension loads at import
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        # set_inductor_config=False: torchao would otherwise change torch.compile's global settings,
        # which then leak into every variant compiled or benchmarked later in the same process
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)

    def float_module(self, directory, man):
        """The variant's float module on the GPU, in `DTYPE`, before torchao converts it."""
        return _gpu_module(directory, man, self.DTYPE)


@dataclass(frozen=True)
class Fp8Config(TorchaoConfig):
    """fp8 e4m3 weights and activations, per-row scales; kept layers and the rest in bf16."""

    DTYPE: ClassVar[str] = "bfloat16"

    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "bf16"), "keep", KEEP_HELP)

    def torchao_config(self):
        from xopt.quiet import quiet_imports

        with quiet_imports():
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


@dataclass(frozen=True)
class SmoothTorchaoConfig(CalibratedConfig, TorchaoConfig):
    """int8 after SmoothQuant: the saved profile's factors are folded in before torchao converts."""

    calib_method: str = option("smoothquant", "str", CALIB_METHOD_HELP)

    def float_module(self, directory, man):
        import torch

        from xopt.calibration.profile import Profile

        module = variant_module(directory, man)
        prof = Profile.load(directory / PROFILE_FILE)
        prof.check(module, f"{directory / PROFILE_FILE}")
        prof.apply_smoothing(module)            # W *= s; x / s in a pre-hook (moves to the GPU with it)
        return module.to(device="cuda", dtype=getattr(torch, self.DTYPE))

    def check(self, who: str) -> None:
        from xopt.calibration.run import parse_method

        super().check(who)
        if not parse_method(self.calib_method)[1]:
            raise XoptError(f"int8-smooth needs a SmoothQuant calibration method (got {self.calib_method!r}); "
                            "use --calib-method smoothquant or METHOD+smoothquant, or the int8 variant")


@dataclass(frozen=True)
class BnbConfig(VariantConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp16"), "keep", KEEP_HELP)
    threshold: float = option(6.0, "float", "LLM.int8 outlier threshold (inputs above it run in fp16)")


def _gpu_module(directory, man, dtype):
    import torch

    return variant_module(directory, man).to(device="cuda", dtype=getattr(torch, dtype))


class BucketRunner(TorchRunner):
    """A compiled module fed fixed shape buckets (CUDA graphs replay one graph per shape)."""

    def __init__(self, name, module, output_names, batch_buckets, seq_multiple: int, max_length: int, pad_id: int,
                 device: str = "cuda"):
        super().__init__(name, module, output_names, device=device)
        self.batch_buckets = sorted(batch_buckets)
        self.seq_multiple, self.max_length, self.pad_id = seq_multiple, max_length, pad_id
        self.shapes: set[tuple[int, int]] = set()
        self.info["buckets"] = 0

    def bucket(self, b: int, t: int) -> tuple[int, int]:
        bb = next((x for x in self.batch_buckets if x >= b), b)
        tt = -(-t // self.seq_multiple) * self.seq_multiple
        return bb, max(t, min(tt, self.max_length))

    def prepare(self, input_ids, attention_mask):
        b, t = input_ids.shape
        bb, tt = self.bucket(b, t)
        ids = np.full((bb, tt), self.pad_id, dtype=np.int64)
        mask = np.zeros((bb, tt), dtype=np.int64)
        ids[:b, :t], mask[:b, :t] = input_ids, attention_mask
        mask[b:, 0] = 1                 # filler rows: one token each, so no row is fully masked
        self.shapes.add((bb, tt))
        self.info["buckets"] = len(self.shapes)
        return super().prepare(ids, mask), (b, t)

    def run(self, inputs):
        import torch

        (ids, mask), shape = inputs
        # one graph per bucket: allow more recompilations than dynamo's default, for this call only
        with torch._dynamo.config.patch(recompile_limit=max(64, 2 * len(self.shapes))):
            return super().run((ids, mask)), shape

    def to_numpy(self, outputs):
        from xopt.modeling import PER_TOKEN_OUTPUTS

        outs, (b, t) = outputs
        return {n: v[:b, :t] if n in PER_TOKEN_OUTPUTS else v[:b] for n, v in super().to_numpy(outs).items()}


def _compiled(variant, directory, man, module, config: CompileCudaConfig):
    import torch

    from xopt.hf import load_tokenizer

    t0 = time.perf_counter()
    compiled = torch.compile(module, mode=config.mode, dynamic=False)
    tok = load_tokenizer(directory)
    runner = BucketRunner(variant.name, compiled, output_names(man), config.buckets, config.seq_multiple,
                          int(man["model"].get("max_length", 512)), tok.pad_token_id)
    runner.info["wrap_s"] = round(time.perf_counter() - t0, 3)   # compilation itself: first call per bucket
    return runner


def _load_half(variant, directory, man, config: HalfConfig, dtype: str = "float16"):
    """The HF model cast to `dtype` (each registry entry names its own)."""
    return TorchRunner(variant.name, _gpu_module(directory, man, dtype), output_names(man), "cuda")


def _load_compile(variant, directory, man, config: CompileCudaConfig):
    return _compiled(variant, directory, man, _gpu_module(directory, man, "float16"), config)


def _build_smooth(variant, ckpt, out, config: SmoothTorchaoConfig, exports=None) -> dict:
    """Weights (linked) + the SmoothQuant calibration profile of the Linears int8 quantises."""
    from xopt.calibration.run import calibrate_checkpoint

    build_weights(variant, ckpt, out, config)
    prof, _ = calibrate_checkpoint(ckpt, config, quantized=config.keep.quantizes)
    prof.save(out / PROFILE_FILE)
    return {"calibration": prof.identity()}


def _load_torchao(variant, directory, man, config: TorchaoConfig):
    module = config.float_module(directory, man)
    quantize_torchao(module, config)
    ops, kept = torch_quantized_ops(module)           # what torchao replaced, not what was asked for
    check_quantized(variant.name, variant.precision, ops)
    runner = _compiled(variant, directory, man, module, config) if config.compile else \
        TorchRunner(variant.name, module, output_names(man), "cuda")
    runner.info.update(quantized_ops=ops, kept=kept)
    return runner


def quantize_torchao(module, config: TorchaoConfig) -> list[str]:
    """The `int8`/`fp8` recipe proper: torchao's conversion of `config` (W8A8, or fp8 per-row) on
    every Linear of `module` not matched by `config.keep`, in place, on whatever device the module
    is on (int8 runs on the CPU too, which is how the tests check torchao's API without a GPU).
    Returns the Linears' names."""
    from xopt.quiet import quiet_imports

    with quiet_imports():         # torchao logs its C-extension loads at import
        from torchao.quantization import quantize_

    names = config.keep.linears(module)
    wanted = set(names)
    quantize_(module, config.torchao_config(), filter_fn=lambda m, fqn: fqn in wanted)
    return names


def quantize_bnb(module, keep: KeepPolicy, threshold: float) -> list[str]:
    """The `bnb-int8` recipe proper: every Linear not matched by `keep` becomes bitsandbytes'
    `Linear8bitLt` (LLM.int8, outliers above `threshold` in fp16), in place. The weights are
    quantised when the module next moves to a device (`.cuda()`; `.to("cpu")` on the CPU, which
    bitsandbytes >= 0.49 also runs). Returns the Linears' names."""
    import bitsandbytes as bnb
    import torch

    names = keep.linears(module)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        lin = getattr(owner, attr)
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                has_fp16_weights=False, threshold=threshold)
        q.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        setattr(owner, attr, q)
    return names


def _load_bnb(variant, directory, man, config: BnbConfig):
    import torch

    module = variant_module(directory, man).to(torch.float16)
    quantize_bnb(module, config.keep, config.threshold)
    module = module.cuda()            # Int8Params quantise on the move to the GPU
    ops, kept = torch_quantized_ops(module)           # the Linear8bitLt modules really in place
    check_quantized(variant.name, variant.precision, ops)
    return TorchRunner(variant.name, module.eval(), output_names(man), "cuda", info={"quantized_ops": ops, "kept": kept})


VARIANTS = [
    Variant("fp16", backend="torch", precision="fp16", device="cuda",
            description="HF model in fp16 on the GPU, SDPA attention",
            build=build_weights, load=partial(_load_half, dtype="float16"), config=HalfConfig()),
    Variant("bf16", backend="torch", precision="bf16", device="cuda",
            description="HF model in bf16 on the GPU, SDPA attention",
            build=build_weights, load=partial(_load_half, dtype="bfloat16"), config=HalfConfig(),
            min_capability=(8, 0)),
    Variant("compile-cuda", backend="torch.compile", precision="fp16", device="cuda",
            description="fp16 + torch.compile max-autotune (inductor) + CUDA graphs per shape bucket",
            build=build_weights, load=_load_compile, config=CompileCudaConfig()),
    Variant("int8", backend="torchao", precision="int8", device="cuda",
            description="W8A8 (torchao): int8 per-channel weights, dynamic per-token int8 activations, "
                        "int8 tensor-core GEMMs, compiled per shape bucket",
            build=build_weights, load=_load_torchao, config=TorchaoConfig(), requires=("torchao",),
            min_capability=(8, 0), activation_scales="dynamic per token"),
    Variant("int8-smooth", backend="torchao", precision="int8", device="cuda",
            description="int8 (W8A8, torchao) after SmoothQuant scaling calibrated by xopt.calibration",
            build=_build_smooth, load=_load_torchao, config=SmoothTorchaoConfig(),
            requires=("torchao",), min_capability=(8, 0), activation_scales="dynamic per token"),
    Variant("fp8", backend="torchao", precision="fp8", device="cuda",
            description="fp8 e4m3 weights and activations, per-row scales, torch._scaled_mm (torchao)",
            build=build_weights, load=_load_torchao, config=Fp8Config(),
            requires=("torchao",), min_capability=(8, 9), activation_scales="dynamic per token"),
    Variant("bnb-int8", backend="bitsandbytes", precision="int8", device="cuda",
            description="bitsandbytes LLM.int8 (Linear8bitLt, outlier threshold 6): the common baseline",
            build=build_weights, load=_load_bnb, config=BnbConfig(), requires=("bitsandbytes",),
            activation_scales="dynamic per token"),
]

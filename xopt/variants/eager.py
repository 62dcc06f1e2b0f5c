"""PyTorch variants on the checkpoint's own weights: `fp32`, `compile`, `int8-dynamic`.

All three keep the checkpoint's safetensors (hard-linked, not copied) and apply their
recipe when loaded; the manifest pins the weights by hash, so a variant directory always
runs the weights it was built from.

- `fp32`: eager PyTorch with SDPA attention, the reference every other variant is
  compared against.
- `compile`: `torch.compile` (inductor) with dynamic batch and sequence dimensions; the
  compilation happens on the first call, which benchmarks time apart from the loop.
- `int8-dynamic`: int8 weights per output channel and int8 activations quantised on the fly
  (torch.ao dynamic quantisation, fbgemm kernels). Linears matched by the `keep` policy stay
  in fp32: by default the FFN output projections and the head. torch.ao's API is deprecated,
  but torchao's int8 dynamic-activation config has no eager CPU kernel and runs many times
  slower than fp32 on CPU (bench/results/int8-recipe-2026-11-30-cpu.md), so torch.ao stays
  until torchao has a faster CPU path; `onnx-int8` is xopt's CPU int8 recipe.

Configs: `EagerConfig` (fp32: no options), `CompileConfig`, `DynamicInt8Config`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xopt.variants.base import (FFN_OUT_AND_HEAD, KeepPolicy, Runner, Variant, VariantConfig,
                                link_or_copy, option, output_names, torch_quantized_ops, weight_files)


@dataclass(frozen=True)
class EagerConfig(VariantConfig):
    """fp32: no options."""


@dataclass(frozen=True)
class CompileConfig(VariantConfig):
    mode: str | None = option(None, "str", "torch.compile mode (default, reduce-overhead, max-autotune)")


@dataclass(frozen=True)
class DynamicInt8Config(VariantConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp32"), "keep",
                              "regex of Linear module names left in fp32 ('' quantises every Linear)")


class TorchRunner(Runner):
    def __init__(self, name, module, output_names, device="cpu", info: dict | None = None):
        super().__init__(name, output_names, info)
        self.module = module
        self.device = device

    def prepare(self, input_ids, attention_mask):
        import torch

        return (torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device),
                torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.device))

    def run(self, inputs):
        import torch

        with torch.inference_mode():
            return self.module(*inputs)

    def to_numpy(self, outputs):
        return {n: o.detach().float().cpu().numpy() for n, o in zip(self.output_names, outputs)}

    def synchronize(self):
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize()


def build_weights(variant, ckpt, out: Path, config, exports=None) -> dict:
    """The build of every variant that applies its recipe when loaded: link the weights, once
    they are known to fill the model (`load_module` refuses missing, mismatched and stray
    tensors; the recipes that export load the module for their export anyway)."""
    from xopt.modeling import load_module

    load_module(ckpt)
    for f in weight_files(ckpt.path):
        link_or_copy(ckpt.path / f, out / f)
    return {}


def variant_module(directory: Path, man: dict):
    """The fp32 XoptModel of a variant directory's weights."""
    from xopt.modeling import Checkpoint, ModelCard, load_module

    return load_module(Checkpoint(directory, ModelCard.from_json(man["model"]), man))


def _load_fp32(variant, directory, man, config: EagerConfig):
    return TorchRunner(variant.name, variant_module(directory, man), output_names(man))


def _load_compile(variant, directory, man, config: CompileConfig):
    import torch

    module = variant_module(directory, man)
    # dynamic=True: one graph for every batch size and sequence length instead of a
    # recompilation per shape. Options stay local to this module (no global config edits).
    compiled = torch.compile(module, dynamic=True, mode=config.mode)
    return TorchRunner(variant.name, compiled, output_names(man))


def quantize_dynamic_int8(module, keep: KeepPolicy):
    """int8 per-channel weights, dynamic activations, for every Linear `keep` does not keep."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name in keep.linears(module)}
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"
    return quantize_dynamic(module, qconfig_spec=spec, inplace=False), sorted(spec)


def _build_int8_dynamic(variant, ckpt, out: Path, config: DynamicInt8Config, exports=None) -> dict:
    """Link the weights, then convert them as loading will and count what torch.ao replaced
    (the conversion is deterministic, so the counts describe what every load runs)."""
    import warnings

    from xopt.modeling import load_module

    build_weights(variant, ckpt, out, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao's deprecation notice
        qmodule, _ = quantize_dynamic_int8(load_module(ckpt), config.keep)
    quantized, kept = torch_quantized_ops(qmodule)
    return {"quantized_ops": quantized, "kept": kept}


def _load_int8_dynamic(variant, directory, man, config: DynamicInt8Config):
    import warnings

    t0 = time.perf_counter()
    module = variant_module(directory, man)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao's deprecation notice, once per load
        qmodule, quantized = quantize_dynamic_int8(module, config.keep)
    return TorchRunner(variant.name, qmodule, output_names(man),
                       info={"quantized_linears": len(quantized), "quantize_s": round(time.perf_counter() - t0, 3)})


VARIANTS = [
    Variant("fp32", backend="torch", precision="fp32", device="cpu",
            description="eager PyTorch, fp32, SDPA attention (the reference)",
            build=build_weights, load=_load_fp32, config=EagerConfig()),
    Variant("compile", backend="torch.compile", precision="fp32", device="cpu",
            description="torch.compile (inductor), dynamic batch and sequence length",
            build=build_weights, load=_load_compile, config=CompileConfig()),
    Variant("int8-dynamic", backend="torch", precision="int8", device="cpu",
            description="int8 weights per channel + dynamic int8 activations (torch.ao, fbgemm)",
            build=_build_int8_dynamic, load=_load_int8_dynamic, config=DynamicInt8Config(),
            activation_scales="dynamic per tensor"),
]

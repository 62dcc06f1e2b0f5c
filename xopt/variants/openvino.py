"""OpenVINO variants (CPU): the peer a deployment engineer picks beside ONNX Runtime.

Each starts from the checkpoint's plain ONNX export (`ExportCache`, unfused: OpenVINO applies its
own transformations), converted once per checkpoint by `openvino.convert_model` into OpenVINO IR
(`model.xml` + `.bin`; `ExportCache.derived`); the float variants hard-link that IR:
- `openvino-fp32`: inference precision f32;
- `openvino-bf16`: inference precision bf16, on CPUs with AVX512_BF16 or AMX (refused in one line
  elsewhere, where OpenVINO would silently run f32);
- `openvino-int8`: NNCF post-training quantisation with its transformer preset
  (`nncf.quantize(..., model_type=nncf.ModelType.TRANSFORMER)`), the stock recipe OpenVINO
  documents, calibrated on xopt's multilingual calibration set (`xopt.calibration`), run at
  OpenVINO's default inference precision for the CPU (bf16 for what stays in float where the
  CPU has bf16), as a user's stock run gets.

The family calls `openvino` and `nncf` directly: optimum-intel (2.2.0) requires
transformers < 5.6, huggingface-hub < 1.22 and torchvision, which xopt's transformers 5 stack
does not admit.

Loading compiles the IR for "CPU" with the thread count every CPU backend gets (XOPT_THREADS,
else the library's default) and the LATENCY performance hint at every batch size: xopt runs one
synchronous request at a time, and THROUGHPUT splits the threads into streams that only
parallel requests fill (one request at b8 took 2x as long under it). `-o hint=throughput`
keeps it for a server that sends parallel requests. What runs in int8 is counted
from the compiled model's runtime graph (`runtimePrecision` of its FullyConnected/MatMul ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.progress import step
from xopt.variants.base import (CalibratedConfig, Runner, Variant, VariantConfig, check_quantized, link_or_copy,
                                option, output_names, quantized_ops_record)
from xopt.variants.onnx_export import ExportCache, check_io

IR = "model.xml"
HINTS = ("latency", "throughput")
GEMMS = ("FullyConnected", "MatMul", "Convolution")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")      # where OpenVINO's CPU plugin runs bf16 natively


def has_bf16() -> bool:
    from xopt.host import cpu_flags

    return bool(cpu_flags() & set(BF16_FLAGS))


@dataclass(frozen=True)
class InferencePrecision:
    """What a variant asks of OpenVINO's CPU plugin: `hint` is its INFERENCE_PRECISION_HINT
    (None: the library's default for the CPU, as a stock run gets). A bf16 entry also names
    BF16_FLAGS as its `cpu_flags`, so that the registry refuses it where OpenVINO would
    silently run f32."""

    hint: str | None = None


F32, BF16, LIBRARY_DEFAULT = InferencePrecision("f32"), InferencePrecision("bf16"), InferencePrecision()


HINT_HELP = "OpenVINO performance hint: latency (one request at a time) or throughput (streams for parallel requests)"


def _check_hint(hint: str) -> None:
    if hint not in HINTS:
        raise XoptError(f"hint {hint!r}: use {', '.join(HINTS)}")


@dataclass(frozen=True)
class OpenVinoConfig(VariantConfig):
    hint: str = option("latency", "str", HINT_HELP)

    def check(self, who: str) -> None:
        super().check(who)
        _check_hint(self.hint)


@dataclass(frozen=True)
class OpenVinoInt8Config(CalibratedConfig):
    hint: str = option("latency", "str", HINT_HELP)
    calib_samples: int = option(300, "int", "calibration texts, balanced over the languages (NNCF's subset)")

    def check(self, who: str) -> None:
        super().check(who)
        _check_hint(self.hint)


def _float_ir(ckpt, exports: ExportCache) -> Path:
    """The directory of the checkpoint's f32 IR, converted once per checkpoint (`ExportCache`):
    openvino-fp32 and -bf16 hold the same IR, and openvino-int8 quantises it."""
    def convert(d: Path) -> None:
        import openvino as ov

        with step("OpenVINO convert"):
            _save(ov.convert_model(str(exports.get(ckpt, fuse=False))), d)

    return exports.derived(ckpt, "openvino-ir", convert)


def _read_float(ckpt, exports: ExportCache):
    import openvino as ov

    return ov.Core().read_model(str(_float_ir(ckpt, exports) / IR))


def _save(model, out: Path) -> None:
    import openvino as ov

    ov.save_model(model, str(out / IR), compress_to_fp16=False)   # weights as they are: f32 or int8


def _build_float(variant, ckpt, out: Path, config: OpenVinoConfig, exports: ExportCache,
                 run: InferencePrecision = LIBRARY_DEFAULT) -> dict:
    src = _float_ir(ckpt, exports)
    for f in (IR, "model.bin"):
        link_or_copy(src / f, out / f)
    return {}


def _build_int8(variant, ckpt, out: Path, config: OpenVinoInt8Config, exports: ExportCache) -> dict:
    import nncf

    from xopt.calibration import CalibrationSet

    calib = CalibrationSet.from_config(config, ckpt.path, ckpt.card.input_prefix, dev_samples=0)
    samples = [{"input_ids": ids, "attention_mask": mask} for ids, mask in calib.batches(ckpt.card.max_length)]
    model = _read_float(ckpt, exports)
    with step(f"NNCF quantize ({len(samples)} texts, transformer preset)"):
        q = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(samples))
    _save(q, out)
    counted, kept = count_int8(_compile(out, "latency", None))
    check_quantized(variant.name, variant.precision, counted)
    return {"quantized_ops": counted, "kept": kept,
            "calibration": {**calib.identity(), "method": "nncf-transformer-preset"}}


def _compile(directory: Path, hint: str, precision: str):
    import openvino as ov

    from xopt.host import env_threads

    props = {"PERFORMANCE_HINT": hint.upper()}
    if precision is not None:       # None: OpenVINO's default for this CPU (bf16 where it has bf16)
        props["INFERENCE_PRECISION_HINT"] = precision
    if (threads := env_threads()) is not None:
        props["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    try:
        return core.compile_model(core.read_model(str(directory / IR)), "CPU", props)
    except RuntimeError as e:      # an IR OpenVINO refuses (a damaged or foreign model.xml / model.bin)
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise XoptError(f"{directory / IR}: OpenVINO cannot load it ({why}); rebuild it with `xopt compile`") from e


def count_int8(compiled) -> tuple[dict, list[str]]:
    """(`quantized_ops`, kept) from the compiled model's runtime graph: GEMM-like ops that run in
    i8/u8, and the module names (from the ops' ONNX scope names) of those left in float."""
    from xopt.calibration.profile import onnx_node_to_module

    hist: dict[str, int] = {}
    kept = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].value if "layerType" in info else ""
        if kind not in GEMMS:
            continue
        if str(info["runtimePrecision"].value if "runtimePrecision" in info else "").lower() in ("i8", "u8"):
            hist[f"openvino.{kind}"] = hist.get(f"openvino.{kind}", 0) + 1
        elif op.get_friendly_name().startswith("/"):      # a weight GEMM of the export (not attention's)
            kept.append(onnx_node_to_module(op.get_friendly_name()))
    return quantized_ops_record(hist), sorted(kept)


class OpenVinoRunner(Runner):
    def __init__(self, name, directory: Path, names, hint: str, precision: str):
        from xopt.modeling import graph_names

        super().__init__(name, names, {"hint": hint, "inference_precision": precision or "default"})
        self.fetch = graph_names(names)
        model = _compile(directory, hint, precision)
        check_io(directory / IR, [i.get_any_name() for i in model.inputs],
                 {n for o in model.outputs for n in o.get_names()}, self.fetch)
        self.request, self.outputs = model.create_infer_request(), [model.output(n) for n in self.fetch]

    def prepare(self, input_ids, attention_mask):
        return {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}

    def run(self, inputs):
        return self.request.infer(inputs)

    def to_numpy(self, outputs):     # copies: the request reuses its output buffers
        return {n: np.array(outputs[o]) for n, o in zip(self.output_names, self.outputs)}


def _load(variant, directory: Path, man, config, run: InferencePrecision = LIBRARY_DEFAULT) -> OpenVinoRunner:
    return OpenVinoRunner(variant.name, directory, output_names(man), config.hint, run.hint)


VARIANTS = [
    Variant("openvino-fp32", backend="openvino", precision="fp32", device="cpu",
            description="peer: OpenVINO on the plain ONNX export, f32", build=partial(_build_float, run=F32),
            load=partial(_load, run=F32), requires=("openvino",), config=OpenVinoConfig(), peer=True),
    Variant("openvino-bf16", backend="openvino", precision="bf16", device="cpu",
            description="peer: OpenVINO, bf16 inference precision (CPUs with AVX512_BF16 or AMX)",
            build=partial(_build_float, run=BF16), load=partial(_load, run=BF16), requires=("openvino",),
            config=OpenVinoConfig(), cpu_flags=BF16_FLAGS, peer=True),
    Variant("openvino-int8", backend="openvino", precision="int8", device="cpu",
            description="peer: OpenVINO + NNCF post-training int8, transformer preset (the documented stock recipe)",
            build=_build_int8, load=_load, requires=("openvino", "nncf"), config=OpenVinoInt8Config(), peer=True,
            activation_scales="static"),
]

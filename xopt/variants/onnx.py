"""ONNX Runtime variants: `onnx-fp32`, `onnx-int8` (the default CPU int8 recipe),
`onnx-int8-static` (calibrated static Q/DQ) and the stock peer `ort-stock-int8`.

Recipe, `onnx-fp32` (config `OnnxConfig`):
1. export `XoptModel` with dynamic batch and sequence axes. The TorchScript exporter
   (`dynamo=False`) with eager attention is used because ONNX Runtime's BERT fusions
   (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu) match its graph and
   do not match the dynamo exporter's (no Attention fused there, a slower graph on CPU);
2. fuse with `onnxruntime.transformers.optimizer` (option `fuse`) and save the fused graph;
3. check the saved model against PyTorch on a few inputs; the worst cosine goes in the manifest.

Recipe, `ort-stock-int8` (config `OrtStockInt8Config`, no options): the peer a deployment
engineer gets from ONNX Runtime's documentation without xopt, registered so that every report
and pick shows xopt's int8 beside it. The docs' recipe for transformer models: fuse with the
transformer optimiser (the `onnx-fp32` graph), then `quantize_dynamic` with its defaults except
per-channel int8 weights, so every MatMul, the attention and the embedding table are quantised
and nothing is kept. The quantiser's own error message on fused graphs asks for
`DefaultTensorType` (the fused contrib ops carry no types), the one extra option passed.

Recipe, `onnx-int8` (config `OnnxInt8Config`): the peer's graph and kernels, with the two
sources of its accuracy loss removed.
1. Calibrate (`xopt.calibration`, min-max + SmoothQuant, alpha 0.7 by default, on a multilingual
   sample): per input channel, s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha), one vector per group
   of Linears reading one input (a layer's query, key and value).
2. Apply s to the fused fp32 graph (`smooth_fused_graph`): weights' input rows times s, and a Mul
   by 1/s on the matmul's input. Outlier channels of LayerNorm and GELU outputs no longer
   set the per-tensor activation scale. The Mul sits after the fusions, so every fused op stays.
3. `quantize_dynamic` on every matmul (attention QKV as QAttention, attention output, FFN in and
   out), weights int8 per output channel. The width adapts to the building CPU (`reduce_range`
   "auto", `int8_kernels`): 7 bits where it has no VNNI, whose absence makes ONNX Runtime's
   uint8 x int8 kernels add pairs of products in int16 with saturation (VPMADDUBSW) that 7-bit
   weights cannot reach; 8 bits where VNNI accumulates in int32. The manifest and the runner's
   info (in every bench record) say which; loading 8-bit weights on a CPU without VNNI warns.
   The head (negligible compute, the scored logits) stays fp32.
Options: `calib_method` without `+smoothquant` skips step 2, `reduce_range=true|false` forces the
weight width, `keep` a regex of Linears left in fp32, `keep_fp16`/`max_drop` the sensitivity fallback.

The candidates this recipe was chosen from, with their accuracy and speed, are in
bench/results/int8-recipe-2026-11-30-cpu.md and int8-candidates-2026-11-30-cpu.md.

Recipe, `onnx-int8-static` (config `OnnxInt8StaticConfig`): the unfused export (every MatMul
visible), then ONNX Runtime's static quantiser in Q/DQ format: int8 weights per output
channel, uint8 activations with the ranges of a calibration profile (min-max, percentile,
entropy or MSE, optionally SmoothQuant, optionally the most sensitive layers left in fp32 by
`keep_fp16`/`max_drop`), the Linears matched by `keep` left in fp32. ONNX Runtime fuses the
Q/DQ pairs into int8 kernels when the session is created. The same Q/DQ graph is what TensorRT
consumes.

Every int8 build counts what really runs in int8 (`quantized_ops`): the built model is
optimised by ONNX Runtime exactly as a session loads it (`SessionOptions.optimized_model_filepath`
saves the graph that runs), and its node types are counted: MatMulInteger, DynamicQuantizeMatMul,
MatMulIntegerToFloat, QAttention, QEmbedLayerNormalization, QLinear*/QGemm, and MatMul/Gemm whose
weight comes from a DequantizeLinear. `kept` lists the float MatMul/Gemm/Attention nodes that
still hold a weight, by module name: the Linears that stay fp32.

ONNX node names map to module names through `xopt.calibration.profile.onnx_node_to_module`,
the one mapping (the TorchScript exporter names a Linear's MatMul/Gemm by its module scope; the
names ONNX Runtime rewrites keep that scope as their prefix), so every keep rule and every `kept`
list here is the `KeepPolicy` over module names that the PyTorch recipes use.

The export, its check against PyTorch, the export cache and ONNX Runtime sessions are in
`onnx_export.py` (shared with the OpenVINO and TensorRT families); the graph passes (SmoothQuant
on the fused graph) and the counting of what runs in int8 are in `onnx_graph.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.progress import step
from xopt.variants.base import (CALIB_METHOD_HELP, FFN_OUT_AND_HEAD, HEAD, PROFILE_FILE, FallbackConfig,
                                KeepPolicy, ServingSpec, Variant, VariantConfig, link_or_copy, option, output_names,
                                require_file)
from xopt.variants.onnx_export import (MODEL_FILE, ExportCache, OrtRunner, check_against_torch,
                                       providers, quiet, save_model, session, write_hf_config)
from xopt.variants.onnx_graph import (calibrated_export, calibrated_matmuls, int8_facts, fused_linears,
                                      fused_op_counts, smooth_fused_graph)


# ---------------------------------------------------------------------------------------
# The variants: config, build, load

KEEP_HELP = "regex of Linear module names left in fp32 ('' quantises every Linear)"


@dataclass(frozen=True)
class OnnxConfig(VariantConfig):
    fuse: bool = option(True, "bool", "apply ONNX Runtime's BERT fusions to the exported graph")
    device: str = option("cpu", "str", "cpu, or cuda: ONNX Runtime's CUDA execution provider (onnxruntime-gpu)")

    def check(self, who: str) -> None:
        super().check(who)
        if self.device not in ("cpu", "cuda"):
            raise XoptError(f"{who}: device {self.device!r}: use cpu or cuda")


@dataclass(frozen=True)
class OrtStockInt8Config(VariantConfig):
    """ONNX Runtime's stock recipe: nothing to choose."""


@dataclass(frozen=True)
class OnnxInt8StaticConfig(FallbackConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp32"), "keep", KEEP_HELP)


@dataclass(frozen=True)
class OnnxInt8Config(FallbackConfig):
    keep: KeepPolicy = option(KeepPolicy(HEAD, "fp32"), "keep", KEEP_HELP)
    calib_method: str = option("minmax+smoothquant", "str", CALIB_METHOD_HELP)
    smoothquant_alpha: float | str | None = option(0.7, "alpha", "SmoothQuant alpha, or a comma list to choose "
                                                                 "from on the held-out sample")
    reduce_range: bool | str = option("auto", "auto_bool", "7-bit int8 weights, so that the uint8 x int8 products "
                                      "of CPUs without VNNI never saturate; auto: 7-bit where the building CPU "
                                      "has no VNNI, 8-bit where it has")


def int8_kernels(reduce_range: bool | str) -> dict:
    """How the int8 weights suit the CPU's int8 kernels, for the manifest and the records:
    `reduce_range` resolved ("auto": on where the CPU lacks VNNI/AMX int8 dot products, whose
    absence makes ORT's uint8 x int8 kernels sum pairs of products in int16 with saturation)."""
    from xopt.host import has_int8_dot

    dot = has_int8_dot()
    reduce = (not dot) if reduce_range == "auto" else bool(reduce_range)
    return {"reduce_range": reduce, "weight_bits": 7 if reduce else 8, "built_on_int8_dot": dot,
            "kernels": "VNNI (int32 accumulation)" if dot else "VPMADDUBSW (int16 pair sums)"}


# The fp32 export computes what PyTorch computes: every output's worst cosine against eager
# PyTorch on the check sentences is at least this (fused fp32 kernels differ by rounding only).
EXPORT_MIN_COSINE = 0.9999


def enforce_export_check(check: dict, ckpt) -> dict:
    """`check` (check_against_torch) when every output agrees with PyTorch, else a one-line error."""
    bad = {k: v["min_cosine"] for k, v in check.items() if not v["min_cosine"] >= EXPORT_MIN_COSINE}
    if bad:
        name, cos = min(bad.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else -1.0)
        raise XoptError(f"the ONNX export of {ckpt.path} disagrees with PyTorch: output {name} has cosine "
                        f"{cos:.6f} < {EXPORT_MIN_COSINE} on the check sentences; the exporter or ONNX Runtime's "
                        f"fusion changed the model (try --option fuse=false)")
    return check


def _build_fp32(variant, ckpt, out: Path, config: OnnxConfig, exports: ExportCache) -> dict:
    providers(config.device)                        # refused before the export when cuda is not there
    link_or_copy(exports.get(ckpt, config.fuse), out / MODEL_FILE)   # never modified: share it
    write_hf_config(ckpt, out)
    return {"device": config.device, "ops": fused_op_counts(out / MODEL_FILE),
            "export_check": enforce_export_check(check_against_torch(ckpt, out / MODEL_FILE, exports), ckpt)}


def stock_quantize_dynamic(fused: Path, out: Path) -> None:
    """ONNX Runtime's documented dynamic quantisation of a transformer-optimised model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(), step("ONNX Runtime quantiser (dynamic)"):
        quantize_dynamic(str(fused), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _build_stock_int8(variant, ckpt, out: Path, config: "OrtStockInt8Config", exports: ExportCache) -> dict:
    stock_quantize_dynamic(exports.get(ckpt, fuse=True), out / MODEL_FILE)
    write_hf_config(ckpt, out)
    return {"ops": fused_op_counts(out / MODEL_FILE), **int8_facts(out),
            "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


def _build_int8(variant, ckpt, out: Path, config: OnnxInt8Config, exports: ExportCache) -> dict:
    """Calibrate (`xopt.calibration.run`; SmoothQuant factors by default), apply the factors to the
    fused fp32 graph (`smooth_fused_graph`), then ONNX Runtime's dynamic quantiser on every
    matmul not kept: int8 weights per output channel, uint8 activations with per-call scales."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from xopt.calibration.run import calibrate_checkpoint

    profile, _ = calibrate_checkpoint(ckpt, config, config.keep.quantizes)
    model = onnx.load(str(exports.get(ckpt, fuse=True)))
    excluded, fallback = [], []
    for node, names in fused_linears(model.graph):
        # the quantiser rewrites a Gemm into `<name>_MatMul` + Add: a kept Gemm is excluded under both names
        alias = [node.name, node.name + "_MatMul"] if node.op_type == "Gemm" else [node.name]
        if any(config.keep.keeps(n) for n in names):
            excluded += alias
        elif any(n in profile.keep for n in names):
            excluded += alias
            fallback.append(node.name)
    smoothed = smooth_fused_graph(model, profile.smoothing["scales"]) if profile.smoothing else 0
    kernels = int8_kernels(config.reduce_range)
    with tempfile.TemporaryDirectory(prefix="xopt-int8-") as tmp:
        src = Path(tmp) / "smoothed.onnx"
        big = save_model(model, src)
        del model
        with quiet(), step("ONNX Runtime quantiser (dynamic)"):
            # DefaultTensorType: the fused contrib ops carry no type information for the
            # quantiser's shape inference; their outputs are float.
            quantize_dynamic(str(src), str(out / MODEL_FILE), per_channel=True, reduce_range=kernels["reduce_range"],
                             weight_type=QuantType.QInt8, nodes_to_exclude=excluded, use_external_data_format=big,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    profile.save(out / PROFILE_FILE)
    write_hf_config(ckpt, out)
    return {"calibration": profile.identity(), "smoothed_matmuls": smoothed, "int8_kernels": kernels,
            "ops": fused_op_counts(out / MODEL_FILE),
            **int8_facts(out), "kept_fp32": excluded, "fallback_fp32": fallback,
            "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


def _copy_shared_inputs(raw: Path, shared: list, dst: Path) -> Path:
    """`raw` with each node of `shared` (a kept Linear that reads the same tensor as a quantised
    one: a layer's query, key and value) reading an Identity copy of its input, so that it does
    not read it through the quantised one's Q/DQ; ONNX Runtime removes the copies once the Q/DQ
    are placed. Saved as `dst`."""
    import onnx

    model = onnx.load(str(raw))
    by_name = {n.name: n for n in model.graph.node}
    nodes = list(model.graph.node)
    for n in shared:
        node = by_name[n.name]
        copy = onnx.helper.make_node("Identity", [node.input[0]], [node.input[0] + "_fp32_" + node.name],
                                     name=node.name + "_fp32_input")
        node.input[0] = copy.output[0]
        nodes.insert(nodes.index(node), copy)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    save_model(model, dst)
    del model
    return dst


def _build_int8_static(variant, ckpt, out: Path, config: OnnxInt8StaticConfig, exports: ExportCache) -> dict:
    """Calibrate (`xopt.calibration.run`: the method, languages, SmoothQuant and sensitivity
    fallback of the config, or a saved profile), then ONNX Runtime's static quantiser inserts
    Q/DQ with the profile's ranges: they reach it as a `TensorsData` calibration cache
    (`calibration_cache_path`), ORT's own way of taking ranges computed elsewhere. Our ranges
    come from batch-1 unpadded samples, which ORT's histogram calibrators cannot take."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from xopt.calibration.run import calibrate_checkpoint

    profile, module = calibrate_checkpoint(ckpt, config, config.keep.quantizes)
    op_types = ["MatMul"]
    with tempfile.TemporaryDirectory(prefix="xopt-int8-") as tmpdir:
        raw = calibrated_export(ckpt, profile, module, exports, Path(tmpdir))
        graph = onnx.load(str(raw), load_external_data=False).graph
        matmuls = calibrated_matmuls(graph, profile, config.keep)
        excluded = [n.name for n, what, _ in matmuls if what != "quantised"]
        fallback = [n.name for n, what, _ in matmuls if what == "fallback"]
        ranges = {n.input[0]: (np.array(e["rmin"], np.float32), np.array(e["rmax"], np.float32))
                  for n, what, e in matmuls if what == "quantised"}
        weights = {i.name for i in graph.initializer}
        shared = [n for n in graph.node if n.name in excluded and n.input[0] in ranges and
                  any(i in weights for i in n.input[1:])]
        if shared:
            raw = _copy_shared_inputs(raw, shared, Path(tmpdir) / "kept_inputs.onnx")
        cache = Path(tmpdir) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        # Q/DQ on each MatMul's inputs only (as TensorRT's explicit quantisation and Model-Optimizer
        # place them): the float output goes on to the bias Add; ORT fuses DQ -> MatMul into
        # MatMulIntegerToFloat. The profile holds exactly these input ranges.
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True,
                 "OpTypesToExcludeOutputQuantization": op_types}
        with quiet(), step("ONNX Runtime quantiser (static Q/DQ)"):
            quantize_static(str(raw), str(out / MODEL_FILE), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra, calibration_cache_path=cache)
    for leftover in out.glob("*augmented*"):
        leftover.unlink()
    profile.save(out / PROFILE_FILE)
    write_hf_config(ckpt, out)
    return {"calibration": profile.identity(), "ops": fused_op_counts(out / MODEL_FILE), **int8_facts(out),
            "kept_fp32": excluded,
            "fallback_fp32": fallback, "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


def _load(variant, directory: Path, man, config) -> OrtRunner:
    from xopt.host import env_threads

    threads = env_threads()
    device = getattr(config, "device", "cpu")
    path = directory / MODEL_FILE
    runner = OrtRunner(variant.name, session(path, threads, device), output_names(man), path)
    runner.device = device
    if kernels := man.get("int8_kernels"):
        runner.info["int8_kernels"] = kernels
        _warn_saturation(directory, kernels, device)
    return runner


def _warn_saturation(directory: Path, kernels: dict, device: str) -> None:
    """One line when 8-bit weights built for VNNI run on a CPU whose int8 kernels saturate."""
    from xopt.host import has_int8_dot
    from xopt.progress import console

    if device == "cpu" and not kernels.get("reduce_range") and not has_int8_dot():
        console.print(f"warning: {directory} holds 8-bit int8 weights (built on a CPU with VNNI); this CPU has "
                      "no VNNI, so ONNX Runtime's uint8 x int8 products can saturate: rebuild it here, or with "
                      "`-o reduce_range=true`", highlight=False)


def onnx_serving(directory: Path, man: dict) -> ServingSpec:
    """Triton's `onnxruntime` entry of an ONNX variant: the model file and its own I/O."""
    model = require_file(directory, directory / MODEL_FILE, man["variant"])
    return ServingSpec({"backend": "onnxruntime"}, model, "model.onnx", model)


VARIANTS = [
    Variant("onnx-fp32", backend="onnxruntime", precision="fp32", device="cpu",
            description="ONNX export + ONNX Runtime BERT fusions, fp32, CPU execution provider (CUDA with --device cuda)",
            build=_build_fp32, load=_load, requires=("onnxruntime",), config=OnnxConfig(),
            serving=onnx_serving),
    Variant("onnx-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="SmoothQuant on the fused graph, then ONNX Runtime dynamic int8 on every matmul "
                        "(QAttention, per-channel 7-bit weights); head fp32",
            build=_build_int8, load=_load, requires=("onnxruntime",), config=OnnxInt8Config(),
            activation_scales="dynamic per tensor", serving=onnx_serving),
    Variant("onnx-int8-static", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime static int8 (Q/DQ), per-channel weights, calibrated on a multilingual sample",
            build=_build_int8_static, load=_load, requires=("onnxruntime",), config=OnnxInt8StaticConfig(),
            activation_scales="static", serving=onnx_serving),
    Variant("ort-stock-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="peer: ONNX Runtime's documented recipe (transformer optimiser, then quantize_dynamic: "
                        "every MatMul, per-channel int8 weights, nothing kept)",
            build=_build_stock_int8, load=_load, requires=("onnxruntime",), config=OrtStockInt8Config(), peer=True,
            activation_scales="dynamic per tensor", serving=onnx_serving),
]

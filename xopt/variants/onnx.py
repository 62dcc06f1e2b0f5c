"""ONNX Runtime variants: `onnx-fp32`, `onnx-int8` (static, calibrated, Q/DQ), `onnx-int8-dynamic`,
and the stock peer `ort-stock-int8`.

Recipe, `onnx-fp32` (config `OnnxConfig`):
1. export `XoptModel` with dynamic batch and sequence axes. The TorchScript exporter
   (`dynamo=False`) with eager attention is used because ONNX Runtime's BERT fusions
   (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu) match its graph and
   do not match the dynamo exporter's (no Attention fused there, a slower graph on CPU);
2. fuse with `onnxruntime.transformers.optimizer` (option `fuse`) and save the fused graph;
3. check the saved model against PyTorch on a few inputs; the worst cosine goes in the manifest.

Recipe, `onnx-int8-dynamic` (config `OnnxDynamicInt8Config`): the fused graph through ONNX
Runtime's dynamic quantiser (QAttention, DynamicQuantizeMatMul, int8 embedding table; weights
per channel; activation scales computed per call); the Linears matched by `keep` (default: FFN
output projections and head, as in every xopt int8 recipe) stay fp32. `--keep ''` gives ONNX
Runtime's own default (everything quantised).

Recipe, `ort-stock-int8` (config `OrtStockInt8Config`, no options): the peer a deployment
engineer gets from ONNX Runtime's documentation without xopt, registered so that every report
and pick shows xopt's int8 beside it. The docs' recipe for transformer models: fuse with the
transformer optimiser (the `onnx-fp32` graph), then `quantize_dynamic` with its defaults except
per-channel int8 weights, so every MatMul, the attention and the embedding table are quantised
and nothing is kept. The quantiser's own error message on fused graphs asks for
`DefaultTensorType` (the fused contrib ops carry no types), the one extra option passed.

Recipe, `onnx-int8` (config `OnnxInt8Config`): the same export (unfused, so every MatMul is
visible), then ONNX Runtime's own static quantiser in Q/DQ format: int8 weights per output
channel, uint8 activations with the ranges of a calibration profile (`xopt.calibration`:
min-max, percentile, entropy or MSE on a multilingual sample, optionally SmoothQuant, optionally
the most sensitive layers left in fp32 by `keep_fp16`/`max_drop`), the Linears matched by `keep`
left in fp32. The profile is saved beside the model (`calibration_profile.json`) and its
identity goes into the manifest. ONNX Runtime fuses the Q/DQ pairs into int8 kernels when the
session is created. The same Q/DQ graph is what TensorRT consumes.

Every int8 build counts what really runs in int8 (`quantized_ops`): the built model is
optimised by ONNX Runtime exactly as a session loads it (`SessionOptions.optimized_model_filepath`
saves the graph that runs), and its node types are counted: MatMulInteger, DynamicQuantizeMatMul,
MatMulIntegerToFloat, QAttention, QEmbedLayerNormalization, QLinear*/QGemm, and MatMul/Gemm whose
weight comes from a DequantizeLinear. `kept` lists the float MatMul/Gemm/Attention nodes that
still hold a weight, by module name: the Linears that stay fp32.

ONNX node names map to module names through `xopt.calibration.profile.onnx_node_to_module`
(the TorchScript exporter names a Linear's MatMul/Gemm by its module scope), so every keep
rule here is the `KeepPolicy` over module names that the PyTorch recipes use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.variants.base import (FFN_OUT_AND_HEAD, PROFILE_FILE, FallbackConfig, KeepPolicy, Runner, Variant,
                                VariantConfig, link_or_copy, option, output_names)

MODEL_FILE = "model.onnx"
OPSET = 17


class OrtRunner(Runner):
    def __init__(self, name, session, output_names):
        super().__init__(name, output_names)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def prepare(self, input_ids, attention_mask):
        return {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}

    def run(self, inputs):
        return self.session.run(list(self.output_names), inputs)

    def to_numpy(self, outputs):
        return dict(zip(self.output_names, outputs))


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's quantiser logs advice on the root logger and warns freely; not ours to show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_onnx(ckpt, path: Path) -> tuple[str, ...]:
    """Export the checkpoint's XoptModel to ONNX with dynamic batch x sequence axes."""
    from xopt.modeling import load_module

    return export_module(load_module(ckpt), ckpt.output_names, path)


def export_module(module, names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    """Export an XoptModel (possibly modified: SmoothQuant's smoothing) to ONNX."""
    import torch

    from xopt.modeling import PER_TOKEN_OUTPUTS

    module.encoder.set_attn_implementation("eager")   # see module doc: ORT fuses this pattern
    ids = torch.tensor([[0, 35378, 8999, 2], [0, 2, 1, 1]], dtype=torch.long)
    mask = (ids != 1).long()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            **{n: {0: "batch", 1: "sequence"} if n in PER_TOKEN_OUTPUTS else {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=list(names), dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return names


def fuse_bert(src: Path, dst: Path, config: dict) -> dict:
    """ONNX Runtime's transformer fusions for BERT-like encoders; returns the fused op counts."""
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=config["num_attention_heads"],
                                       hidden_size=config["hidden_size"], opt_level=0)
    opt.save_model_to_file(str(dst))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def check_against_torch(ckpt, onnx_path: Path, texts=None) -> dict:
    """Worst cosine / max abs difference of the ONNX model's outputs vs eager PyTorch."""
    import torch

    from xopt.modeling import load_module, load_tokenizer

    texts = texts or ["query: The file could not be opened.", "query: ファイルを開けません",
                      "query: Пароль изменён", "query: PNG image"]
    tok = load_tokenizer(ckpt.path)
    batch = tok(texts, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    with torch.inference_mode():
        ref = load_module(ckpt)(torch.from_numpy(ids), torch.from_numpy(mask))
    got = session(onnx_path).run(list(ckpt.output_names), {"input_ids": ids, "attention_mask": mask})
    out = {}
    for name, r, g in zip(ckpt.output_names, ref, got):
        r = r.numpy()
        cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
        out[name] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(r - g).max())}
    return out


def _config(ckpt) -> dict:
    return json.loads((ckpt.path / "config.json").read_text())


def _identity(ckpt) -> str | None:
    """The checkpoint's weights, head and config hashes from its manifest (None without one)."""
    import hashlib

    files = ckpt.manifest.get("files", {})
    if not files:
        return None
    return hashlib.sha256(json.dumps({k: files.get(k) for k in ("model.safetensors", "head.safetensors",
                                                                 "config.json")}, sort_keys=True).encode()).hexdigest()


class ExportCache:
    """ONNX exports (raw and fused) of checkpoints, kept while their owner builds variants.

    Building the ONNX and TensorRT variants of one checkpoint through one cache exports it
    once. Only the latest checkpoint's files are kept (each form holds all the model's
    weights, so keeping every checkpoint's would fill the disk); they live in a temp directory removed by `close()` (or on
    leaving the `with` block, or when the cache is garbage-collected). Callers link or copy
    the returned files, never modify them."""

    def __init__(self):
        import tempfile
        import weakref

        self.root = Path(tempfile.mkdtemp(prefix="xopt-onnx-"))
        self._paths: dict[tuple[str, bool], Path] = {}
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)

    def __enter__(self) -> "ExportCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, ckpt, fuse: bool = True) -> Path:
        """The checkpoint exported to ONNX (and, with `fuse`, through ORT's BERT fusions)."""
        import tempfile

        ident = _identity(ckpt)
        if ident is None:                     # nothing identifies it: export, do not memoise
            d = Path(tempfile.mkdtemp(dir=self.root))
            export_onnx(ckpt, d / "raw.onnx")
            if not fuse:
                return d / "raw.onnx"
            fuse_bert(d / "raw.onnx", d / "fused.onnx", _config(ckpt))
            return d / "fused.onnx"
        key = (ident, fuse)
        if key not in self._paths or not self._paths[key].is_file():
            self.release(keep=ident)
            d = self.root / ident[:16]
            d.mkdir(exist_ok=True)
            path = d / ("fused.onnx" if fuse else "raw.onnx")
            if fuse:
                fuse_bert(self.get(ckpt, fuse=False), path, _config(ckpt))
            else:
                export_onnx(ckpt, path)
            self._paths[key] = path
        return self._paths[key]

    def release(self, keep: str | None = None) -> None:
        """Remove the exports now, except those of checkpoint identity `keep`."""
        for key in [k for k in self._paths if k[0] != keep]:
            shutil.rmtree(self._paths.pop(key).parent, ignore_errors=True)

    def close(self) -> None:
        self._paths.clear()
        self._finalizer()


def fused_op_counts(path: Path) -> dict:
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {k: v for k, v in sorted(ops.items()) if k in ("Attention", "QAttention", "EmbedLayerNormalization",
                                                           "QEmbedLayerNormalization", "SkipLayerNormalization",
                                                           "BiasGelu", "MatMulInteger", "DynamicQuantizeLinear",
                                                           "QuantizeLinear", "DequantizeLinear", "MatMul")}


# Node types that run in low precision once ONNX Runtime has optimised the graph.
LOW_PRECISION_OPS = frozenset({
    "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "QEmbedLayerNormalization",
    "QLinearMatMul", "QGemm", "QLinearConv", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearSoftmax",
    "QOrderedMatMul", "QOrderedAttention", "QOrderedGelu", "QOrderedLayerNormalization", "DynamicQuantizeLSTM",
    "MatMulNBits", "GatherBlockQuantized"})
FLOAT_LINEAR_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")


def optimized_graph(path: Path):
    """The graph ONNX Runtime runs for `path` (CPU provider, all optimisations), as saved by
    `SessionOptions.optimized_model_filepath`."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="xopt-opt-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath).graph


def _module_of(node_name: str) -> str:
    """The module a (possibly rewritten) node belongs to: its scope up to the first op-named part
    (`/head/Gemm_MatMul/...` -> `head`: the quantiser and the optimiser append to the exporter's name)."""
    import re

    if not node_name.startswith("/"):
        return node_name
    parts = node_name.strip("/").split("/")
    for i, p in enumerate(parts):
        if re.match(r"(MatMul|Gemm|FusedMatMul|Add)", p):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def count_quantized_ops(path: Path) -> tuple[dict, list[str]]:
    """(`quantized_ops`, kept) of an ONNX model as ONNX Runtime runs it: low-precision node types
    (a MatMul/Gemm fed a DequantizeLinear weight counts as `<op><-DequantizeLinear`), and the
    module names of the float MatMul/Gemm/Attention nodes that hold a weight."""
    from xopt.variants.base import quantized_ops_record

    graph = optimized_graph(path)
    weights = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    hist: Counter = Counter()
    kept = []
    for n in graph.node:
        if n.op_type in LOW_PRECISION_OPS:
            hist[n.op_type] += 1
        elif n.op_type in FLOAT_LINEAR_OPS and len(n.input) > 1:
            feed = producer.get(n.input[1])
            if feed is not None and feed.op_type == "DequantizeLinear":
                hist[f"{n.op_type}<-DequantizeLinear"] += 1
            elif n.input[1] in weights:
                kept.append(_module_of(n.name))
        elif n.op_type == "Attention":
            kept.append(n.name)   # fused float attention: the layer's query, key and value Linears
    return quantized_ops_record(dict(hist)), kept


def _int8_facts(out: Path) -> dict:
    quantized, kept = count_quantized_ops(out / MODEL_FILE)
    return {"quantized_ops": quantized, "kept": kept}


# ---------------------------------------------------------------------------------------
# The variants: config, build, load

KEEP_HELP = "regex of Linear module names left in fp32 ('' quantises every Linear)"


@dataclass(frozen=True)
class OnnxConfig(VariantConfig):
    fuse: bool = option(True, "bool", "apply ONNX Runtime's BERT fusions to the exported graph")


@dataclass(frozen=True)
class OnnxDynamicInt8Config(VariantConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp32"), "keep", KEEP_HELP)


@dataclass(frozen=True)
class OrtStockInt8Config(VariantConfig):
    """ONNX Runtime's stock recipe: nothing to choose."""


@dataclass(frozen=True)
class OnnxInt8Config(FallbackConfig):
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp32"), "keep", KEEP_HELP)


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
    link_or_copy(exports.get(ckpt, config.fuse), out / MODEL_FILE)   # never modified: share it
    return {"ops": fused_op_counts(out / MODEL_FILE),
            "export_check": enforce_export_check(check_against_torch(ckpt, out / MODEL_FILE), ckpt)}


def _build_int8_dynamic(variant, ckpt, out: Path, config: OnnxDynamicInt8Config, exports: ExportCache) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = exports.get(ckpt, fuse=True)
    graph = onnx.load(str(fp32), load_external_data=False).graph
    # The quantiser first rewrites each Gemm (the head's linear) into `<name>_MatMul` + Add,
    # so a kept Gemm must be excluded under that name too.
    excluded = [x for n in graph.node if n.op_type in ("MatMul", "Gemm") and config.keep.keeps_node(n.name)
                for x in ([n.name, n.name + "_MatMul"] if n.op_type == "Gemm" else [n.name])]
    with quiet():
        # DefaultTensorType: the fused contrib ops (Attention, SkipLayerNormalization) carry no
        # type information for the quantiser's shape inference; their outputs are float.
        quantize_dynamic(str(fp32), str(out / MODEL_FILE), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"ops": fused_op_counts(out / MODEL_FILE), **_int8_facts(out), "kept_fp32": excluded,
            "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def stock_quantize_dynamic(fused: Path, out: Path) -> None:
    """ONNX Runtime's documented dynamic quantisation of a transformer-optimised model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(fused), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _build_stock_int8(variant, ckpt, out: Path, config: "OrtStockInt8Config", exports: ExportCache) -> dict:
    stock_quantize_dynamic(exports.get(ckpt, fuse=True), out / MODEL_FILE)
    return {"ops": fused_op_counts(out / MODEL_FILE), **_int8_facts(out),
            "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def _build_int8(variant, ckpt, out: Path, config: OnnxInt8Config, exports: ExportCache) -> dict:
    """Calibrate (`xopt.calibration.run`: the method, languages, SmoothQuant and sensitivity
    fallback of the config, or a saved profile), then ONNX Runtime's static quantiser inserts
    Q/DQ with the profile's ranges: they reach it as a `TensorsData` calibration cache
    (`calibration_cache_path`), ORT's own way of taking ranges computed elsewhere. Our ranges
    come from batch-1 unpadded samples, which ORT's histogram calibrators cannot take."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from xopt.calibration.profile import onnx_node_to_module
    from xopt.calibration.run import calibrate_checkpoint

    profile, module = calibrate_checkpoint(ckpt, config.calibration_options(), config.keep.quantizes)
    op_types = ["MatMul"]
    with tempfile.TemporaryDirectory(prefix="xopt-int8-") as tmpdir:
        if profile.smoothing:   # the smoothed module: its 1/s multiplies are in the graph
            raw = Path(tmpdir) / "smoothed.onnx"
            export_module(module, ckpt.output_names, raw)
        else:
            raw = exports.get(ckpt, fuse=False)
        graph = onnx.load(str(raw), load_external_data=False).graph
        weights = {i.name for i in graph.initializer}
        excluded, fallback, ranges = [], [], {}
        for n in graph.node:
            if n.op_type not in op_types:
                continue
            name = onnx_node_to_module(n.name)
            if not any(i in weights for i in n.input):
                # attention's QK^T and PV multiply two activations, each of which one static scale
                # would have to cover for every sentence; they stay fp32 (a few % of the FLOPs)
                excluded.append(n.name)
            elif config.keep.keeps(name) or name not in profile.activations:
                excluded.append(n.name)
            elif name in profile.keep:
                excluded.append(n.name)
                fallback.append(n.name)
            else:
                act = profile.activations[name]
                ranges[n.input[0]] = (np.array(act["rmin"], np.float32), np.array(act["rmax"], np.float32))
        cache = Path(tmpdir) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        # Q/DQ on each MatMul's inputs only (as TensorRT's explicit quantisation and Model-Optimizer
        # place them): the float output goes on to the bias Add; ORT fuses DQ -> MatMul into
        # MatMulIntegerToFloat. The profile holds exactly these input ranges.
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True,
                 "OpTypesToExcludeOutputQuantization": op_types}
        with quiet():
            quantize_static(str(raw), str(out / MODEL_FILE), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra, calibration_cache_path=cache)
    for leftover in out.glob("*augmented*"):
        leftover.unlink()
    profile.save(out / PROFILE_FILE)
    return {"calibration": profile.identity(), "ops": fused_op_counts(out / MODEL_FILE), **_int8_facts(out),
            "kept_fp32": excluded,
            "fallback_fp32": fallback, "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def _load(variant, directory: Path, man, config) -> OrtRunner:
    from xopt.host import env_threads

    threads = env_threads()
    return OrtRunner(variant.name, session(directory / MODEL_FILE, threads), output_names(man))


VARIANTS = [
    Variant("onnx-fp32", backend="onnxruntime", precision="fp32", device="cpu",
            description="ONNX export + ONNX Runtime BERT fusions, fp32, CPU execution provider",
            build=_build_fp32, load=_load, requires=("onnxruntime",), config=OnnxConfig()),
    Variant("onnx-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime static int8 (Q/DQ), per-channel weights, calibrated on a multilingual sample",
            build=_build_int8, load=_load, requires=("onnxruntime",), config=OnnxInt8Config()),
    Variant("onnx-int8-dynamic", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime dynamic int8 on the fused graph (QAttention, per-channel weights)",
            build=_build_int8_dynamic, load=_load, requires=("onnxruntime",), config=OnnxDynamicInt8Config()),
    Variant("ort-stock-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="peer: ONNX Runtime's documented recipe (transformer optimiser, then quantize_dynamic: "
                        "every MatMul, per-channel int8 weights, nothing kept)",
            build=_build_stock_int8, load=_load, requires=("onnxruntime",), config=OrtStockInt8Config()),
]

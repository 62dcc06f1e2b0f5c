"""ONNX Runtime variants: `onnx-fp32` and `onnx-int8` (static, calibrated, Q/DQ).

Recipe, `onnx-fp32`:
1. export `XoptModel` with dynamic batch and sequence axes. We use the TorchScript
   exporter (`dynamo=False`) with eager attention: ONNX Runtime's BERT fusions (Attention,
   EmbedLayerNormalization, SkipLayerNormalization, BiasGelu) match its graph, and do not
   match the dynamo exporter's (checked with torch 2.13 / onnxruntime 1.32: no Attention
   fused, ~1.3x slower on CPU);
2. fuse with `onnxruntime.transformers.optimizer` and save the fused graph;
3. check the saved model against PyTorch on a few inputs; the worst cosine goes in the manifest.

Recipe, `onnx-int8-dynamic`: the fused graph through ONNX Runtime's dynamic quantiser
(QAttention, DynamicQuantizeMatMul, int8 embedding table; weights per channel; activation
scales computed per call), FFN output MatMuls kept in fp32 as in every xopt int8 recipe.
`--keep-fp32 ''` gives ONNX Runtime's own default (everything quantised), the reference
the speed targets are stated against.

Recipe, `onnx-int8`: the same export (unfused, so every MatMul is visible), then ONNX
Runtime's own static quantiser in Q/DQ format: int8 weights per output channel, uint8
activations with the ranges of a calibration profile (`xopt.calibration`: min-max,
percentile, entropy or MSE on a multilingual sample, optionally SmoothQuant, optionally the
most sensitive layers left in fp32 by `keep_fp16`/`max_drop`), MatMuls whose name matches
`keep_fp32` left in fp32. The profile is saved beside the model (`calibration_profile.json`)
and its identity goes into the manifest. ONNX Runtime fuses the Q/DQ pairs into int8 kernels
when the session is created. The same Q/DQ graph is what TensorRT consumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.variants.base import Runner, Variant, link_or_copy, output_names

MODEL_FILE = "model.onnx"
PROFILE_FILE = "calibration_profile.json"
# Left in fp32 by the int8 recipes: FFN output projections (their input is GELU's output,
# whose outliers per-tensor activation scales cannot represent; measured with
# onnx-int8-dynamic on the demo model: retrieval drop 1.25 -> 0.8 points) and the classifier
# head (negligible compute, and its logits are what the task scores).
KEEP_FP32 = r"layer\.\d+/output/dense/MatMul|^/head/"
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


_EXPORTS: dict[tuple, Path] = {}   # (checkpoint identity, fused) -> ONNX file, this process only


def exported(ckpt, fuse: bool = True) -> Path:
    """The checkpoint exported to ONNX (and fused), memoised for the process: building the
    three ONNX variants of one checkpoint exports it once (export + fusion take ~30 s on
    the demo model, 2 CPU cores). Only the latest checkpoint's files are kept (the demo
    model's raw + fused exports are ~0.9 GB; keeping every checkpoint's filled CI's disk);
    they live in temp dirs removed at exit; callers copy."""
    import atexit
    import hashlib
    import tempfile

    files = ckpt.manifest.get("files", {})
    ident = hashlib.sha256(json.dumps({k: files.get(k) for k in ("model.safetensors", "head.safetensors",
                                                                  "config.json")}, sort_keys=True).encode()).hexdigest()
    key = (ident, fuse)
    if not files or key not in _EXPORTS or not _EXPORTS[key].is_file():
        release_exports(keep=ident)
        tmp = Path(tempfile.mkdtemp(prefix="xopt-onnx-"))
        atexit.register(shutil.rmtree, tmp, True)
        path = tmp / ("fused.onnx" if fuse else "raw.onnx")
        if fuse:
            fuse_bert(exported(ckpt, fuse=False), path, _config(ckpt))
        else:
            export_onnx(ckpt, path)
        if not files:
            return path
        _EXPORTS[key] = path
    return _EXPORTS[key]


def release_exports(keep: str | None = None) -> None:
    """Remove the memoised exports now (callers done with a checkpoint's ONNX variants),
    except those of checkpoint identity `keep`."""
    for key in [k for k in _EXPORTS if k[0] != keep]:
        shutil.rmtree(_EXPORTS.pop(key).parent, ignore_errors=True)


def fused_op_counts(path: Path) -> dict:
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {k: v for k, v in sorted(ops.items()) if k in ("Attention", "QAttention", "EmbedLayerNormalization",
                                                           "QEmbedLayerNormalization", "SkipLayerNormalization",
                                                           "BiasGelu", "MatMulInteger", "DynamicQuantizeLinear",
                                                           "QuantizeLinear", "DequantizeLinear", "MatMul")}


def _build_fp32(variant, ckpt, out: Path, options) -> dict:
    link_or_copy(exported(ckpt, options.get("fuse", True)), out / MODEL_FILE)   # never modified: share it
    return {"ops": fused_op_counts(out / MODEL_FILE), "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def _build_int8_dynamic(variant, ckpt, out: Path, options) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = exported(ckpt, fuse=True)
    graph = onnx.load(str(fp32), load_external_data=False).graph
    keep = re.compile(options["keep_fp32"]) if options.get("keep_fp32") else None
    # The quantiser first rewrites each Gemm (the head's linear) into `<name>_MatMul` + Add,
    # so a kept Gemm must be excluded under that name too.
    excluded = [x for n in graph.node if keep and keep.search(n.name)
                for x in ([n.name, n.name + "_MatMul"] if n.op_type == "Gemm" else [n.name])]
    with quiet():
        # DefaultTensorType: the fused contrib ops (Attention, SkipLayerNormalization) carry no
        # type information for the quantiser's shape inference; their outputs are float.
        quantize_dynamic(str(fp32), str(out / MODEL_FILE), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"ops": fused_op_counts(out / MODEL_FILE), "kept_fp32": excluded,
            "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def _build_int8(variant, ckpt, out: Path, options) -> dict:
    """Calibrate (`xopt.calibration.run`: the method, languages, SmoothQuant and sensitivity
    fallback of the options, or a saved profile), then ONNX Runtime's static quantiser inserts
    Q/DQ with the profile's ranges: they reach it as a `TensorsData` calibration cache
    (`calibration_cache_path`), ORT's own way of taking ranges computed elsewhere. Our ranges
    come from batch-1 unpadded samples, which ORT's histogram calibrators cannot take."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from xopt.calibration.profile import onnx_node_to_module
    from xopt.calibration.run import calibrate_checkpoint, keep_filter

    if options.get("activation_matmuls"):
        raise XoptError("activation_matmuls: calibration profiles hold Linear inputs only; attention's "
                        "activation products stay fp32 in onnx-int8")
    profile, module = calibrate_checkpoint(ckpt, options, keep_filter(options.get("keep_fp32")))
    keep = re.compile(options["keep_fp32"]) if options.get("keep_fp32") else None
    op_types = list(options.get("op_types", ["MatMul"]))
    with tempfile.TemporaryDirectory(prefix="xopt-int8-") as tmpdir:
        if profile.smoothing:   # the smoothed module: its 1/s multiplies are in the graph
            raw = Path(tmpdir) / "smoothed.onnx"
            export_module(module, ckpt.output_names, raw)
        else:
            raw = exported(ckpt, fuse=False)
        graph = onnx.load(str(raw), load_external_data=False).graph
        weights = {i.name for i in graph.initializer}
        excluded, fallback, ranges = [], [], {}
        for n in graph.node:
            if n.op_type not in op_types:
                continue
            name = onnx_node_to_module(n.name)
            if not any(i in weights for i in n.input):
                # attention's QK^T and PV multiply two activations, each given one static scale for
                # every sentence; keeping them fp32 gained +0.2 points on both demo tasks (X-STILTs
                # checkpoint, 36 languages) at no measurable cost: they are ~3% of the FLOPs at s128
                excluded.append(n.name)
            elif (keep and keep.search(n.name)) or name not in profile.activations:
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
    return {"calibration": profile.identity(), "ops": fused_op_counts(out / MODEL_FILE), "kept_fp32": excluded,
            "fallback_fp32": fallback, "export_check": check_against_torch(ckpt, out / MODEL_FILE)}


def _load(variant, directory: Path, man):
    import os

    threads = int(os.environ["XOPT_THREADS"]) if os.environ.get("XOPT_THREADS") else None
    return OrtRunner(variant.name, session(directory / MODEL_FILE, threads), output_names(man))


VARIANTS = [
    Variant("onnx-fp32", backend="onnxruntime", precision="fp32", device="cpu",
            description="ONNX export + ONNX Runtime BERT fusions, fp32, CPU execution provider",
            build=_build_fp32, load=_load, requires=("onnxruntime",), options={"fuse": True}),
    Variant("onnx-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime static int8 (Q/DQ), per-channel weights, calibrated on a multilingual sample",
            build=_build_int8, load=_load, requires=("onnxruntime",), calibrated=True,
            options={"calib_method": "minmax", "calib_langs": "all", "calib_samples": 256,
                     "keep_fp32": KEEP_FP32, "activation_matmuls": False, "keep_fp16": None, "max_drop": None}),
    Variant("onnx-int8-dynamic", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime dynamic int8 on the fused graph (QAttention, per-channel weights)",
            build=_build_int8_dynamic, load=_load, requires=("onnxruntime",),
            options={"keep_fp32": KEEP_FP32}),
]

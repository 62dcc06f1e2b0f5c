"""ONNX graph passes and counts of the ONNX Runtime recipes: the fused graph's Linears, the
SmoothQuant pass on them, what an optimised graph runs in low precision (`quantized_ops`,
`kept`), and the graph and per-MatMul activation ranges the calibrated Q/DQ recipes
(`onnx-int8-static`, `trt-int8`) quantise (`calibrated_export`, `calibrated_matmuls`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.variants.onnx_export import MODEL_FILE


def calibrated_export(ckpt, profile, module, exports, tmp: Path) -> Path:
    """The unfused ONNX graph a calibrated Q/DQ recipe quantises: with SmoothQuant factors in
    `profile`, the smoothed `module` exported into `tmp` (its 1/s multiplies precede the MatMuls,
    whose ranges the profile took on the smoothed inputs); else the checkpoint's shared export."""
    from xopt.variants.onnx_export import export_module

    if not profile.smoothing:
        return exports.get(ckpt, fuse=False)
    raw = Path(tmp) / "smoothed.onnx"
    export_module(module, ckpt.output_names, raw)
    return raw


def calibrated_matmuls(graph, profile, keep) -> list[tuple]:
    """(node, what a static int8 recipe does with it, its profile activation entry or None) for
    each MatMul of an exported graph, in graph order. "activations": it multiplies two
    activations (attention's QK^T and PV, which one static scale would have to cover for every
    sentence); "kept": the `keep` policy keeps its Linear, or the profile has no range for it;
    "fallback": the profile's sensitivity fallback keeps it; "quantised": it gets Q/DQ with the
    entry's range (`amax` for a symmetric grid, `rmin`/`rmax` for an asymmetric one)."""
    from xopt.calibration.profile import onnx_node_to_module

    weights = {i.name for i in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        name = onnx_node_to_module(n.name)
        if not any(i in weights for i in n.input):
            out.append((n, "activations", None))
        elif keep.keeps(name) or name not in profile.activations:
            out.append((n, "kept", None))
        elif name in profile.keep:
            out.append((n, "fallback", None))
        else:
            out.append((n, "quantised", profile.activations[name]))
    return out


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


def count_quantized_ops(path: Path) -> tuple[dict, list[str]]:
    """(`quantized_ops`, kept) of an ONNX model as ONNX Runtime runs it: low-precision node types
    (a MatMul/Gemm fed a DequantizeLinear weight counts as `<op><-DequantizeLinear`), and the
    module names of the float MatMul/Gemm/Attention nodes that hold a weight."""
    from xopt.calibration.profile import onnx_node_to_module
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
                kept.append(onnx_node_to_module(n.name))
        elif n.op_type == "Attention":
            kept.append(n.name)   # fused float attention: the layer's query, key and value Linears
    return quantized_ops_record(dict(hist)), kept


def int8_facts(out: Path) -> dict:
    quantized, kept = count_quantized_ops(out / MODEL_FILE)
    return {"quantized_ops": quantized, "kept": kept}


def fused_linears(graph) -> list[tuple]:
    """The weight-holding matmuls of a (fused) graph: (node, the Linear modules it computes).
    A fused Attention computes its layer's query, key and value; its output keeps the exporter's
    scope (`/.../layer.0/attention/self/Reshape_3_output_0`), which names the layer. A MatMul or
    Gemm with an initializer weight computes the module its name scopes."""
    from xopt.calibration.profile import onnx_node_to_module

    weights = {i.name for i in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type == "Attention" and len(n.input) > 1 and n.input[1] in weights:
            layer = onnx_node_to_module(n.output[0])
            out.append((n, tuple(f"{layer}.{k}" for k in ("query", "key", "value"))))
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights:
            out.append((n, (onnx_node_to_module(n.name),)))
    return out


def smooth_fused_graph(model, scales: dict) -> int:
    """Apply SmoothQuant factors to a fused ONNX model in place: each smoothed matmul's weight
    rows (input channels) are multiplied by s, and a `Mul` by 1/s on its input is inserted before
    it. The Mul comes after ONNX Runtime's fusions, so Attention, SkipLayerNormalization and
    EmbedLayerNormalization stay fused (folding 1/s into the LayerNorm is impossible in a
    post-LN encoder: its output is also the residual). Returns the number of matmuls smoothed."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    before: dict[int, list] = {}
    done = 0
    for node, names in fused_linears(graph):
        have = [n for n in names if n in scales]
        if not have:
            continue
        if len(have) != len(names):
            raise XoptError(f"the calibration profile smooths {', '.join(have)} but not all of {', '.join(names)}, "
                            f"which ONNX Runtime runs as one matmul ({node.name}); recalibrate")
        s = np.asarray(scales[names[0]], np.float32)
        if any(not np.allclose(np.asarray(scales[n], np.float32), s, rtol=1e-6) for n in names[1:]):
            raise XoptError(f"the calibration profile gives {', '.join(names)} different SmoothQuant factors, but "
                            f"they share one input ({node.name}); recalibrate with this xopt (`xopt calibrate`)")
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        w = w * (s[None, :] if trans_b else s[:, None])          # [out, in] or [in, out]
        tag = f"xopt_smooth_{done}"
        graph.initializer.extend([numpy_helper.from_array(w, f"{node.input[1]}_{tag}"),
                                  numpy_helper.from_array((1.0 / s).astype(np.float32), f"{tag}_inv_s")])
        mul = helper.make_node("Mul", [node.input[0], f"{tag}_inv_s"], [f"{tag}_input"], name=f"{tag}_Mul")
        node.input[0], node.input[1] = mul.output[0], f"{node.input[1]}_{tag}"
        before.setdefault(id(node), []).append(mul)
        done += 1
    nodes = [m for n in graph.node for m in (*before.get(id(n), []), n)]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return done

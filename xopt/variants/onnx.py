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

Measured on the demo model (the demo-topic checkpoint from e5-small), 2-core AVX2 CPU, 1 thread:
accuracy drop vs eager fp32 averaged over the demo languages of demo-topic and demo-retrieval
(73 task x language cells), speed at batch 1 x 128 tokens relative to `ort-stock-int8` in
interleaved rounds of one run (full tables: bench/results/):

| candidate | avg drop | time vs peer |
|---|---|---|
| `ort-stock-int8` (peer) | -1.15 | 1.00x |
| peer + reduce_range | -0.65 | ~1.0x |
| peer with uint8 weights (U8U8) | -0.62 | |
| peer, per-tensor weights + reduce_range | -5.85 | |
| static Q/DQ min-max, FFN-out + head fp32 (`onnx-int8-static`) | -1.17 | 1.17x |
| static Q/DQ + SmoothQuant 0.7 | -0.15 | 1.20x |
| dynamic, FFN-out + head fp32 | -0.89 | 1.20x |
| SmoothQuant folded into copied LayerNorms, dynamic | -0.34 | 1.12x |
| SmoothQuant 0.7 as Mul + reduce_range (`onnx-int8`) | -0.10 | 1.00x |

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
from xopt.progress import step
from xopt.variants.base import (CALIB_METHOD_HELP, FFN_OUT_AND_HEAD, HEAD, PROFILE_FILE, FallbackConfig,
                                KeepPolicy, Runner, Variant,
                                VariantConfig, link_or_copy, option, output_names)

MODEL_FILE = "model.onnx"
OPSET = 17


class OrtRunner(Runner):
    def __init__(self, name, session, output_names):
        from xopt.modeling import graph_names

        super().__init__(name, output_names)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.fetch = graph_names(output_names, {o.name for o in session.get_outputs()})

    def prepare(self, input_ids, attention_mask):
        return {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}

    def run(self, inputs):
        return self.session.run(list(self.fetch), inputs)

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


def providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for `device`; a one-line error when this onnxruntime has
    no CUDA provider (the CPU-only `onnxruntime` package)."""
    if device != "cuda":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise XoptError(f"device cuda needs ONNX Runtime's CUDA execution provider; this onnxruntime "
                        f"{ort.__version__} has {', '.join(have)} (pip install onnxruntime-gpu in place of onnxruntime)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def session(path: Path, threads: int | None = None, device: str = "cpu"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=providers(device))


def export_onnx(ckpt, path: Path) -> tuple[str, ...]:
    """Export the checkpoint's XoptModel to ONNX with dynamic batch x sequence axes."""
    from xopt.modeling import load_module

    return export_module(load_module(ckpt), ckpt.output_names, path)


def export_module(module, names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    """Export an XoptModel (possibly modified: SmoothQuant's smoothing) to ONNX, its outputs
    under the graph names (xopt.modeling.GRAPH_NAMES; an encoder-only model also returns
    last_hidden_state). Returns the graph's output names."""
    import torch

    from xopt.modeling import HIDDEN_OUTPUT, PER_TOKEN_OUTPUTS, WithHidden, graph_names

    module.encoder.set_attn_implementation("eager")   # see module doc: ORT fuses this pattern
    cfg = module.encoder.config       # a traced example within this vocabulary; one row padded
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids = torch.tensor([[0, 5, 6, 2], [0, 2, pad, pad]], dtype=torch.long) % cfg.vocab_size
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    hidden = not module.has_head
    per_token = {g for n, g in zip(names, graph_names(names)) if n in PER_TOKEN_OUTPUTS} | {HIDDEN_OUTPUT}
    out_names = graph_names(names) + ((HIDDEN_OUTPUT,) if hidden else ())
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            **{n: {0: "batch", 1: "sequence"} if n in per_token else {0: "batch"} for n in out_names}}
    with warnings.catch_warnings(), torch.inference_mode(), step("ONNX export"):
        warnings.simplefilter("ignore")
        torch.onnx.export(WithHidden(module) if hidden else module, (ids, mask), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=list(out_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return out_names


def fuse_bert(src: Path, dst: Path, config: dict) -> dict:
    """ONNX Runtime's transformer fusions for BERT-like encoders; returns the fused op counts.

    The fusions run shape inference on copies of the whole model several times; the word
    embedding table is most of an XLM-R model's bytes (250k x H) and none of their business (a
    Gather's output shape does not depend on the table's row count). So the fusions see a
    stand-in of its first rows, and the real one is put back under its name before the model is
    saved; if the fused graph no longer reads the table under that name, the fusions run again
    on the whole model."""
    import onnx
    from onnxruntime.transformers import optimizer

    def fuse(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optimizer.optimize_model(model, model_type="bert", num_heads=config["num_attention_heads"],
                                            hidden_size=config["hidden_size"], opt_level=0)

    with step("ONNX Runtime fusions"):
        model = onnx.load(str(src))
        aside = set_aside_tables(model)
        opt = fuse(model)
        if aside and not put_back_tables(opt.model, aside):
            model = onnx.load(str(src))
            opt = fuse(model)
    # as save_model: external data past 2 GiB (the fused model is about the exported one's size)
    big = sum(f.stat().st_size for f in Path(src).parent.glob(Path(src).name + "*")) > PROTOBUF_LIMIT
    opt.save_model_to_file(str(dst), use_external_data_format=big)
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


# An initializer this large (elements) that only Gather nodes read as their table is set aside
# while graph passes that copy the model run.
ASIDE_MIN_ELEMENTS = 1 << 20
STAND_IN_ROWS = 4096


def set_aside_tables(model) -> dict:
    """Replace each large initializer read only as a Gather's table (the word embeddings) by a
    stand-in of its first STAND_IN_ROWS rows, in place; returns {name: the real tensor}."""
    from onnx import numpy_helper

    graph = model.graph
    readers: dict[str, list] = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            readers.setdefault(i, []).append((n.op_type, k))
    aside = {}
    for init in graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        uses = readers.get(init.name, [])
        if count >= ASIDE_MIN_ELEMENTS and len(init.dims) == 2 and uses and all(u == ("Gather", 0) for u in uses):
            real = type(init)()
            real.CopyFrom(init)
            # more rows than the position and segment tables, which the fusions compare it with
            stand_in = numpy_helper.from_array(numpy_helper.to_array(init)[:STAND_IN_ROWS].copy(), init.name)
            init.CopyFrom(stand_in)
            aside[init.name] = real
    return aside


def put_back_tables(model, aside: dict) -> bool:
    """Put the tables `set_aside_tables` took back, in place; False (nothing changed) when one of
    them is no longer an initializer of the model."""
    inits = {i.name: i for i in model.graph.initializer}
    if not all(name in inits for name in aside):
        return False
    for name, real in aside.items():
        inits[name].CopyFrom(real)
    return True


CHECK_TEXTS = ("query: The file could not be opened.", "query: ファイルを開けません", "query: Пароль изменён",
               "query: PNG image")


def torch_reference(ckpt, texts=CHECK_TEXTS) -> tuple:
    """(input_ids, attention_mask, eager PyTorch outputs as numpy) of `texts` for the checkpoint."""
    import torch

    from xopt.modeling import load_module, load_tokenizer

    tok = load_tokenizer(ckpt.path)
    batch = tok(list(texts), padding=True, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    with torch.inference_mode():
        ref = load_module(ckpt)(torch.from_numpy(ids), torch.from_numpy(mask))
    return ids, mask, [r.numpy() for r in ref]


def check_against_torch(ckpt, onnx_path: Path, exports: "ExportCache | None" = None) -> dict:
    """Worst cosine / max abs difference of the ONNX model's outputs vs eager PyTorch (the
    reference computed once per checkpoint when an ExportCache is given)."""
    with step("check against PyTorch"):
        ids, mask, ref = exports.reference(ckpt) if exports is not None else torch_reference(ckpt)
        got = OrtRunner("export check", session(onnx_path), ckpt.output_names)(ids, mask)   # xopt's names
    out = {}
    for name, r in zip(ckpt.output_names, ref):
        g = got[name]
        cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
        out[name] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(r - g).max())}
    return out


def _config(ckpt) -> dict:
    return json.loads((ckpt.path / "config.json").read_text())


def write_hf_config(ckpt, out: Path) -> None:
    """config.json beside model.onnx, as Hugging Face tools expect in an ONNX model directory
    (optimum's ORTModel classes read it): the checkpoint's config with the head's labels as
    `id2label`/`label2id`."""
    config = _config(ckpt)
    if ckpt.card.head in ("sequence", "token"):
        config["id2label"] = {str(i): label for i, label in enumerate(ckpt.card.labels)}
        config["label2id"] = {label: i for i, label in enumerate(ckpt.card.labels)}
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


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
        self._reference: tuple[str | None, tuple | None] = (None, None)
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

    def derived(self, ckpt, name: str, make) -> Path:
        """A directory of files that `make(directory)` derives from the checkpoint's export (an
        OpenVINO IR, say), made once per checkpoint like the exports; callers link or copy them."""
        import tempfile

        ident = _identity(ckpt)
        if ident is None:
            d = Path(tempfile.mkdtemp(dir=self.root))
            make(d)
            return d
        key = (ident, name)
        if key not in self._paths or not self._paths[key].is_dir():
            self.release(keep=ident)
            d = self.root / ident[:16] / name
            shutil.rmtree(d, ignore_errors=True)        # a make() that failed part-way
            d.mkdir(parents=True)
            make(d)
            self._paths[key] = d
        return self._paths[key]

    def reference(self, ckpt) -> tuple:
        """`torch_reference(ckpt)`, kept for the latest checkpoint."""
        ident = _identity(ckpt)
        if ident is None or self._reference[0] != ident:
            self._reference = (ident, torch_reference(ckpt))
        return self._reference[1]

    def release(self, keep: str | None = None) -> None:
        """Remove the exports now, except those of checkpoint identity `keep`."""
        for key in [k for k in self._paths if k[0] != keep]:
            shutil.rmtree(self._paths.pop(key).parent, ignore_errors=True)

    def close(self) -> None:
        self._paths.clear()
        self._finalizer()


# Bytes past which a model's weights go to external data: protobuf's 2 GiB less headroom.
PROTOBUF_LIMIT = (1 << 31) - (1 << 26)


def save_model(model, path: Path) -> bool:
    """Save an ONNX model, its weights as external data (`<name>.data`) beyond protobuf's 2 GiB
    limit (XLM-R-large); returns whether they went external."""
    import onnx

    big = model.ByteSize() > PROTOBUF_LIMIT
    onnx.save(model, str(path), save_as_external_data=big, location=path.name + ".data")
    return big


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
    return {"ops": fused_op_counts(out / MODEL_FILE), **_int8_facts(out),
            "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


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


def _build_int8(variant, ckpt, out: Path, config: OnnxInt8Config, exports: ExportCache) -> dict:
    """Calibrate (`xopt.calibration.run`; SmoothQuant factors by default), apply the factors to the
    fused fp32 graph (`smooth_fused_graph`), then ONNX Runtime's dynamic quantiser on every
    matmul not kept: int8 weights per output channel, uint8 activations with per-call scales."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from xopt.calibration.run import calibrate_checkpoint

    profile, _ = calibrate_checkpoint(ckpt, config.calibration_options(), config.keep.quantizes)
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
            **_int8_facts(out), "kept_fp32": excluded, "fallback_fp32": fallback,
            "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


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
        shared = [n for n in graph.node if n.name in excluded and n.input[0] in ranges and
                  any(i in weights for i in n.input[1:])]
        if shared:
            # a kept Linear that reads the same tensor as a quantised one (a layer's query, key and
            # value) would read it through the quantised one's Q/DQ: it reads an Identity copy
            # instead, which ONNX Runtime removes once the Q/DQ are placed
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
            raw = Path(tmpdir) / "kept_inputs.onnx"
            save_model(model, raw)
            del model
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
    return {"calibration": profile.identity(), "ops": fused_op_counts(out / MODEL_FILE), **_int8_facts(out),
            "kept_fp32": excluded,
            "fallback_fp32": fallback, "export_check": check_against_torch(ckpt, out / MODEL_FILE, exports)}


def _load(variant, directory: Path, man, config) -> OrtRunner:
    from xopt.host import env_threads

    threads = env_threads()
    device = getattr(config, "device", "cpu")
    runner = OrtRunner(variant.name, session(directory / MODEL_FILE, threads, device), output_names(man))
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


VARIANTS = [
    Variant("onnx-fp32", backend="onnxruntime", precision="fp32", device="cpu",
            description="ONNX export + ONNX Runtime BERT fusions, fp32, CPU execution provider (CUDA with --device cuda)",
            build=_build_fp32, load=_load, requires=("onnxruntime",), config=OnnxConfig()),
    Variant("onnx-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="SmoothQuant on the fused graph, then ONNX Runtime dynamic int8 on every matmul "
                        "(QAttention, per-channel 7-bit weights); head fp32",
            build=_build_int8, load=_load, requires=("onnxruntime",), config=OnnxInt8Config()),
    Variant("onnx-int8-static", backend="onnxruntime", precision="int8", device="cpu",
            description="ONNX Runtime static int8 (Q/DQ), per-channel weights, calibrated on a multilingual sample",
            build=_build_int8_static, load=_load, requires=("onnxruntime",), config=OnnxInt8StaticConfig()),
    Variant("ort-stock-int8", backend="onnxruntime", precision="int8", device="cpu",
            description="peer: ONNX Runtime's documented recipe (transformer optimiser, then quantize_dynamic: "
                        "every MatMul, per-channel int8 weights, nothing kept)",
            build=_build_stock_int8, load=_load, requires=("onnxruntime",), config=OrtStockInt8Config(), peer=True),
]

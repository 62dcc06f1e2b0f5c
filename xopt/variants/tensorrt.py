"""TensorRT variants: `trt-fp16`, `trt-int8` (explicit Q/DQ) and `torch-tensorrt`.

Recipe, `trt-fp16`: the checkpoint's ONNX export (`xopt.variants.onnx_export.ExportCache`: TorchScript
exporter, dynamic batch x sequence axes, unfused, opset 17) -> TensorRT's ONNX parser -> an
engine built with the FP16 builder flag and one optimisation profile over batch x sequence
(`min`/`opt`/`max` from the options) -> `model.engine`, an opaque file. The ONNX file the
engine came from is kept beside it.

Recipe, `trt-int8`: the same export with explicit QuantizeLinear/DequantizeLinear pairs
(`insert_qdq`) on the inputs of every weight MatMul whose Linear the `keep` policy does not
keep (default: FFN output projections and head stay fp16): activations
per tensor, weights per output channel, both symmetric int8 with zero point 0 (the only
form TensorRT accepts); activation ranges from the calibration profile of
`xopt.calibration` (the same profile the other int8 variants use), weight ranges from the
weights. TensorRT's implicit calibrators are deprecated; with Q/DQ in the graph it runs
explicit quantisation (INT8 and FP16 builder flags: int8 where the graph says so, fp16
elsewhere). The Q/DQ ONNX runs in ONNX Runtime too, which is how it is tested on hosts
without TensorRT.

Loading checks the engine against this host: an engine is only valid for the TensorRT
version and GPU model that built it, so another one is refused with the command that
rebuilds it (never rebuilt silently).

Recipe, `torch-tensorrt`: the fp16 module compiled by torch_tensorrt's dynamo frontend with
dynamic batch x sequence inputs, when loaded (the variant directory holds the weights only).

Configs: `TrtConfig` (the optimisation profile, workspace), `TrtInt8Config` (+ keep and the
calibration options), `TorchTrtConfig` (the profile, min_block_size).

Written against TensorRT's documented Python API (10.x; 8.6 works through the explicit-batch
flag). Everything up to the engine (export, Q/DQ placement and its numerics in ONNX Runtime)
is tested on any host; building and running engines is tested under the `tensorrt` marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xopt.calibration.calibrators import int8_scale
from xopt.errors import XoptError
from xopt.progress import step
from xopt.variants.base import (CALIB_METHOD_HELP, FFN_OUT_AND_HEAD, MODEL_INPUTS, PROFILE_FILE, FallbackConfig,
                                KeepPolicy, Runner, ServingSpec, Variant, VariantConfig, link_or_copy, option,
                                output_names, require_file)

ENGINE_FILE = "model.engine"
ONNX_FILE = "model.onnx"
INPUTS = MODEL_INPUTS


def _shape(s: str) -> tuple[int, int]:
    try:
        b, t = (int(x) for x in str(s).lower().split("x"))
        return b, t
    except ValueError:
        raise XoptError(f"optimisation profile shape {s!r} is not BATCHxSEQUENCE (e.g. 32x128)") from None


def profile_shape(spec: str, flag: str = "--shapes") -> str:
    """trtexec's shape syntax, `NAME:BATCHxSEQUENCE[,NAME:BATCHxSEQUENCE..]`, as the profile's one
    BATCHxSEQUENCE. The profile covers every input with the same shape, so the inputs named must
    agree; inputs left out get that shape too. Errors are one line naming `flag`."""
    example = f"e.g. {flag} {INPUTS[0]}:1x16,{INPUTS[1]}:1x16"
    items = [x.strip() for x in str(spec).split(",")]
    if not any(items) or not all(items):
        raise XoptError(f"{flag} {spec!r}: give NAME:BATCHxSEQUENCE per input, comma-separated, {example}")
    shapes: dict[str, tuple[int, int]] = {}
    for item in items:
        name, colon, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not colon or not name:
            raise XoptError(f"{flag} {spec!r}: {item!r} has no input name; give NAME:BATCHxSEQUENCE, {example}")
        if name not in INPUTS:
            raise XoptError(f"{flag} {spec!r}: unknown input {name!r}; the inputs are {', '.join(INPUTS)}")
        if name in shapes:
            raise XoptError(f"{flag} {spec!r}: input {name} given twice")
        parts = dims.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            raise XoptError(f"{flag} {spec!r}: {dims.strip()!r} is not BATCHxSEQUENCE of positive integers "
                            f"(e.g. 1x16)")
        shapes[name] = (int(parts[0]), int(parts[1]))
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{n} {b}x{t}" for n, (b, t) in shapes.items())
        raise XoptError(f"{flag} {spec!r}: every input shares one BATCHxSEQUENCE profile; got {got}")
    b, t = next(iter(shapes.values()))
    return f"{b}x{t}"


@dataclass(frozen=True)
class _ProfileShapes(VariantConfig):
    min: str = option("1x1", "str", "smallest BATCHxSEQUENCE of the optimisation profile")
    opt: str = option("32x128", "str", "BATCHxSEQUENCE the engine is tuned for")
    max: str = option("128x512", "str", "largest BATCHxSEQUENCE of the optimisation profile")

    def check(self, who: str) -> None:
        super().check(who)
        lo, opt, hi = self.shapes()
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)) or min(lo) < 1:
            raise XoptError(f"{who}: optimisation profile needs 1 <= min <= opt <= max in both dimensions "
                            f"(got min {self.min}, opt {self.opt}, max {self.max})")

    def shapes(self) -> tuple[tuple[int, int], ...]:
        return _shape(self.min), _shape(self.opt), _shape(self.max)

    @classmethod
    def parse_flag(cls, key: str, value, flag: str):
        """--min-shapes/--opt-shapes/--max-shapes take trtexec's shape syntax (`profile_shape`)."""
        return profile_shape(value, flag) if key in ("min", "opt", "max") else value


@dataclass(frozen=True)
class TrtConfig(_ProfileShapes):
    workspace_mb: int = option(4096, "int", "TensorRT builder workspace (MiB)")


@dataclass(frozen=True)
class TrtInt8Config(FallbackConfig, TrtConfig):
    calib_method: str = option("percentile", "str", CALIB_METHOD_HELP)
    keep: KeepPolicy = option(KeepPolicy(FFN_OUT_AND_HEAD, "fp16"), "keep",
                              "regex of Linear module names left in fp16 ('' quantises every Linear)")


@dataclass(frozen=True)
class TorchTrtConfig(_ProfileShapes):
    min_block_size: int = option(5, "int", "smallest subgraph torch_tensorrt converts")


# ---------------------------------------------------------------------------------------
# Q/DQ placement (ONNX only: runs and is tested without TensorRT)

def _int8_const(name: str, value) -> "onnx.TensorProto":   # noqa: F821
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.int8), name)


def insert_qdq(src: Path, dst: Path, act_amax: dict[str, float], keep: KeepPolicy) -> dict:
    """Put symmetric int8 Q/DQ on the inputs of the weight MatMuls of `src` named in `act_amax`.

    `act_amax`: ONNX MatMul node name -> clip range of its activation input (scale = amax/127).
    The weight input becomes an int8 initializer (per output channel, axis 1 of the [K, N]
    MatMul weight) behind a DequantizeLinear, as TensorRT expects pre-quantised weights.
    One Q/DQ pair per activation tensor (Q, K and V share theirs). Returns what was quantised."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets = [n for n in g.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits
               and n.name in act_amax and not keep.keeps_node(n.name)]
    amax_of: dict[str, float] = {}
    for n in targets:
        amax_of[n.input[0]] = max(amax_of.get(n.input[0], 0.0), float(act_amax[n.name]))
    new_nodes, new_inits, qdq_of = [], [], {}
    for t, amax in amax_of.items():
        if not np.isfinite(amax) or amax <= 0:
            raise XoptError(f"calibration range of {t!r} is {amax}: recalibrate (a constant or broken activation)")
        base = t.strip("/").replace("/", "_")
        s, z, q, dq = f"{base}_act_scale", f"{base}_act_zp", f"{base}_q", f"{base}_dq"
        new_inits += [numpy_helper.from_array(np.asarray(int8_scale(amax), dtype=np.float32), s), _int8_const(z, 0)]
        new_nodes += [helper.make_node("QuantizeLinear", [t, s, z], [q], name=f"{base}_QuantizeLinear"),
                      helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{base}_DequantizeLinear")]
        qdq_of[t] = dq
    done_w = {}
    for n in targets:
        w_name = n.input[1]
        if w_name not in done_w:
            done_w[w_name] = _int8_weight(inits[w_name], new_inits, new_nodes)
        n.input[0] = qdq_of[n.input[0]]
        n.input[1] = done_w[w_name]
    used = {i for n in g.node for i in n.input}
    kept_inits = [i for i in g.initializer if i.name in used or i.name not in done_w]
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    # DQ of weights and Q/DQ of activations go first; a topological order is restored below
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(_toposort(nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    kept = [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in inits and n.name not in
            {t.name for t in targets}]
    return {"quantized": [n.name for n in targets], "kept_fp": kept}


def _int8_weight(init, new_inits: list, new_nodes: list) -> str:
    """A [K, N] MatMul weight as int8 per output channel (axis 1) behind a DequantizeLinear,
    appended to `new_inits`/`new_nodes`; returns the DequantizeLinear's output name."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(init).astype(np.float32)          # [K, N]
    scale = int8_scale(np.maximum(np.abs(w).max(axis=0), 1e-8))
    wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    base = init.name.strip("/").replace("/", "_")
    qn, sn, zn, dn = f"{base}_int8", f"{base}_w_scale", f"{base}_w_zp", f"{base}_w_dq"
    new_inits += [numpy_helper.from_array(wq, qn), numpy_helper.from_array(scale.astype(np.float32), sn),
                  _int8_const(zn, np.zeros(w.shape[1]))]
    new_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dn], name=f"{base}_DequantizeLinear", axis=1))
    return dn


def _toposort(nodes, available: set[str]):
    available = set(available) | {""}
    out, pending = [], list(nodes)
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise RuntimeError("Q/DQ insertion left a cycle or a dangling input in the ONNX graph")
        ids = {id(n) for n in ready}
        for n in ready:
            available.update(n.output)
        out += ready
        pending = [n for n in pending if id(n) not in ids]
    return out


# ---------------------------------------------------------------------------------------
# Engine build and runtime (needs tensorrt and a GPU)

def _gpu() -> dict:
    import torch

    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"sm_{p.major}{p.minor}"}


def build_engine(onnx_path: Path, engine_path: Path, config: TrtConfig, int8: bool) -> dict:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:   # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise XoptError(f"TensorRT could not parse {onnx_path.name}: {errs}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    builder_config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        builder_config.set_flag(trt.BuilderFlag.INT8)   # explicit quantisation: int8 exactly where the Q/DQ are
    lo, opt, hi = config.shapes()
    profile = builder.create_optimization_profile()
    for name in INPUTS:
        profile.set_shape(name, lo, opt, hi)
    builder_config.add_optimization_profile(profile)
    with step(f"TensorRT engine build ({'int8' if int8 else 'fp16'})"):
        blob = builder.build_serialized_network(network, builder_config)
    if blob is None:
        raise XoptError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    engine_path.write_bytes(bytes(blob))
    return {"tensorrt": {"version": trt.__version__, "gpu": _gpu(),
                         "profile": {"min": list(lo), "opt": list(opt), "max": list(hi)}}}


def check_engine_host(directory: Path, man: dict) -> None:
    """Refuse an engine built for another TensorRT version or GPU model, saying how to rebuild."""
    import tensorrt as trt

    built = man.get("tensorrt") or {}
    here = {"version": trt.__version__, "gpu": _gpu()}
    if built.get("version") != here["version"] or (built.get("gpu") or {}).get("name") != here["gpu"]["name"]:
        src = man.get("source", {}).get("checkpoint", "CHECKPOINT")
        raise XoptError(
            f"{directory}: TensorRT engine built with TensorRT {built.get('version')} for "
            f"{(built.get('gpu') or {}).get('name')}; this host has TensorRT {here['version']} on "
            f"{here['gpu']['name']}. Engines do not move between them: rebuild with "
            f"`xopt compile {src} --variant {man['variant']} --out {directory} --force`")


class TrtRunner(Runner):
    device = "cuda"

    def __init__(self, name, engine_bytes: bytes, output_names):
        import tensorrt as trt
        import torch

        super().__init__(name, output_names)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise XoptError(f"{name}: TensorRT could not deserialise the engine; rebuild it with `xopt compile --force`")
        self.context = self.engine.create_execution_context()
        self.torch_dtype = {trt.int64: torch.int64, trt.int32: torch.int32, trt.float32: torch.float32,
                            trt.float16: torch.float16}
        # every output tensor needs an address (an encoder-only graph also returns last_hidden_state);
        # xopt's outputs are read under their graph names (xopt.modeling.graph_names)
        from xopt.modeling import graph_names

        self.engine_outputs = [n for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
                               if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.fetch = dict(zip(output_names, graph_names(output_names, set(self.engine_outputs))))

    def prepare(self, input_ids, attention_mask):
        import torch

        return {n: torch.from_numpy(np.ascontiguousarray(a)).to(
                    "cuda", self.torch_dtype[self.engine.get_tensor_dtype(n)])
                for n, a in zip(INPUTS, (input_ids, attention_mask))}

    def run(self, inputs):
        import torch

        for n, t in inputs.items():
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
        buffers = {}
        for n in self.engine_outputs:
            buffers[n] = torch.empty(tuple(self.context.get_tensor_shape(n)),
                                     dtype=self.torch_dtype[self.engine.get_tensor_dtype(n)], device="cuda")
            self.context.set_tensor_address(n, buffers[n].data_ptr())
        outs = {n: buffers[g] for n, g in self.fetch.items()}
        # on torch's current stream: CUDA-event timers and the outputs' consumers see its work
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outs

    def synchronize(self):
        import torch

        torch.cuda.synchronize()

    def to_numpy(self, outputs):
        self.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outputs.items()}


# ---------------------------------------------------------------------------------------
# What a built engine accepts and serves

def engine_limits(man: dict) -> dict:
    """{max_batch, max_seq_len} of an engine: its optimisation profile's max, as the manifest records it."""
    hi = ((man.get("tensorrt") or {}).get("profile") or {}).get("max")
    if isinstance(hi, (list, tuple)) and len(hi) == 2:
        return {"max_batch": int(hi[0]), "max_seq_len": int(hi[1])}
    return {}


def engine_serving(directory: Path, man: dict) -> ServingSpec:
    """Triton's `tensorrt_plan` entry of an engine: its I/O is the ONNX graph TensorRT parsed
    (kept beside it), its batch range the profile the manifest records. Without a recorded
    profile the range cannot be read back from the opaque engine, so the directory is refused."""
    variant = man["variant"]
    engine = require_file(directory, directory / ENGINE_FILE, variant)
    if not engine_limits(man):
        raise XoptError(f"{directory}: the manifest records no TensorRT optimisation profile, so the engine's "
                        f"batch range is unknown; rebuild with `xopt compile --variant {variant} --force`")
    if not (directory / ONNX_FILE).is_file():
        raise XoptError(f"{directory}: {ONNX_FILE} (the graph the engine was parsed from) is missing; rebuild with "
                        f"`xopt compile --variant {variant} --force`")
    return ServingSpec({"platform": "tensorrt_plan"}, engine, "model.plan", directory / ONNX_FILE,
                       engine_limits(man)["max_batch"])


# ---------------------------------------------------------------------------------------
# The variants

def _build_fp16(variant, ckpt, out: Path, config: TrtConfig, exports) -> dict:
    link_or_copy(exports.get(ckpt, fuse=False), out / ONNX_FILE)
    return build_engine(out / ONNX_FILE, out / ENGINE_FILE, config, int8=False)


def build_qdq_onnx(ckpt, out: Path, config: TrtInt8Config, exports) -> dict:
    """The Q/DQ ONNX model trt-int8 hands to TensorRT (`out/model.onnx`), with activation
    ranges from `xopt.calibration` (its profile saved beside it). With SmoothQuant factors in the
    profile (`--calib-method ...+smoothquant`, the profile `onnx-int8` uses), the smoothed model
    is exported: its 1/s multiplies precede the quantised MatMuls, whose ranges the profile took
    on the smoothed inputs. Runs in ONNX Runtime."""
    import tempfile

    import onnx

    from xopt.calibration.run import calibrate_checkpoint
    from xopt.variants.onnx_graph import calibrated_export, calibrated_matmuls

    prof, module = calibrate_checkpoint(ckpt, config, quantized=config.keep.quantizes)
    prof.save(out / PROFILE_FILE)
    with tempfile.TemporaryDirectory(prefix="xopt-trt-") as tmp:
        raw = calibrated_export(ckpt, prof, module, exports, Path(tmp))
        graph = onnx.load(str(raw), load_external_data=False).graph
        act = {n.name: e["amax"] for n, what, e in calibrated_matmuls(graph, prof, config.keep) if what == "quantised"}
        placed = insert_qdq(raw, out / ONNX_FILE, act, config.keep)
    return {"calibration": prof.identity(), "qdq": placed}


def _build_int8(variant, ckpt, out: Path, config: TrtInt8Config, exports) -> dict:
    extra = build_qdq_onnx(ckpt, out, config, exports)
    return {**extra, **build_engine(out / ONNX_FILE, out / ENGINE_FILE, config, int8=True)}


def _load_engine(variant, directory: Path, man, config: TrtConfig):
    check_engine_host(directory, man)
    return TrtRunner(variant.name, (directory / ENGINE_FILE).read_bytes(), output_names(man))


def torch_trt_partition(compiled) -> dict:
    """What torch_tensorrt's dynamo partitioner made of a module: the TensorRT engines (its
    `_run_on_acc_N` children) and the ops left to PyTorch (the FX nodes of its other GraphModule
    children, `_run_on_gpu_N`), by target name."""
    import torch

    engines, fallback = 0, {}
    for name, child in compiled.named_children():
        if name.startswith("_run_on_acc"):
            engines += 1
        elif isinstance(child, torch.fx.GraphModule):
            for node in child.graph.nodes:
                if node.op in ("call_function", "call_method", "call_module"):
                    key = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
                    fallback[key] = fallback.get(key, 0) + 1
    return {"trt_engines": engines, "fallback_ops": dict(sorted(fallback.items()))}


def _load_torch_trt(variant, directory, man, config: TorchTrtConfig):
    import time

    import torch
    import torch_tensorrt

    from xopt.variants.eager import TorchRunner, variant_module

    lo, opt, hi = config.shapes()
    module = variant_module(directory, man).to(device="cuda", dtype=torch.float16)
    spec = [torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch.int64)
            for _ in INPUTS]
    t0 = time.perf_counter()
    compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=spec, enabled_precisions={torch.float16},
                                      min_block_size=config.min_block_size)
    return TorchRunner(variant.name, compiled, output_names(man), "cuda",
                       info={"compile_s": round(time.perf_counter() - t0, 3), **torch_trt_partition(compiled)})


def _build_weights(variant, ckpt, out, config, exports=None):
    from xopt.variants.eager import build_weights

    return build_weights(variant, ckpt, out, config)


VARIANTS = [
    Variant("trt-fp16", backend="tensorrt", precision="fp16", device="cuda",
            description="ONNX -> TensorRT engine, fp16, one optimisation profile over batch x sequence",
            build=_build_fp16, load=_load_engine, config=TrtConfig(), requires=("tensorrt",),
            limits_of=engine_limits, serving=engine_serving),
    Variant("trt-int8", backend="tensorrt", precision="int8", device="cuda",
            description="ONNX with explicit symmetric int8 Q/DQ (xopt.calibration ranges) -> TensorRT engine, "
                        "int8 GEMMs, fp16 elsewhere",
            build=_build_int8, load=_load_engine, config=TrtInt8Config(),
            requires=("tensorrt",), activation_scales="static", limits_of=engine_limits, serving=engine_serving),
    Variant("torch-tensorrt", backend="torch_tensorrt", precision="fp16", device="cuda",
            description="torch_tensorrt dynamo compile, fp16, dynamic batch x sequence (compiled when loaded)",
            build=_build_weights, load=_load_torch_trt, config=TorchTrtConfig(), requires=("torch_tensorrt",)),
]

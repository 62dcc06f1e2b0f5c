"""ONNX export and ONNX Runtime sessions, shared by the families that start from an ONNX graph
(`onnx.py`, `openvino.py`, `tensorrt.py`).

- `export_onnx` / `export_module`: the checkpoint's `XoptModel` through the TorchScript exporter
  with dynamic batch and sequence axes (ONNX Runtime's BERT fusions match its graph);
- `fuse_bert`: `onnxruntime.transformers.optimizer`'s BERT fusions, with large tables (the
  250k-row embedding) set aside as a small stand-in while the optimiser runs;
- `torch_reference` / `check_against_torch`: the export checked against eager PyTorch;
- `ExportCache`: the exports (and files derived from them) of the latest checkpoint, made once
  while a caller builds several variants;
- `session`: an ONNX Runtime session as every runner and check opens it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from xopt.errors import XoptError
from xopt.progress import step
from xopt.variants.base import Runner

MODEL_FILE = "model.onnx"


OPSET = 17


GRAPH_INPUTS = ("input_ids", "attention_mask")


def check_io(where, inputs, outputs, fetch) -> None:
    """Refuse in one line a graph (ONNX, OpenVINO IR) whose inputs are not xopt's two or whose
    outputs lack one the model card names (`fetch`): another model's graph, not this variant's."""
    if sorted(inputs) != sorted(GRAPH_INPUTS) or not set(fetch) <= set(outputs):
        raise XoptError(f"{where}: the graph takes {', '.join(inputs)} and gives {', '.join(sorted(outputs))}; "
                        f"its model card needs inputs {', '.join(GRAPH_INPUTS)} and outputs {', '.join(fetch)}: "
                        "not this variant's graph, rebuild it with `xopt compile`")


class OrtRunner(Runner):
    """An ONNX Runtime session run as a Runner; the graph's inputs must be xopt's two and its
    outputs hold the card's (`output_names`), or it is refused in one line naming `where`."""

    def __init__(self, name, session, output_names, where="the ONNX graph"):
        from xopt.modeling import graph_names

        super().__init__(name, output_names)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        have = {o.name for o in session.get_outputs()}
        self.fetch = graph_names(output_names, have)
        check_io(where, self.input_names, have, self.fetch)

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
    state = ort.capi.onnxruntime_pybind11_state
    refused = tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf",
                                                "InvalidGraph", "NotImplemented", "RuntimeException") if hasattr(state, n))
    try:
        return ort.InferenceSession(str(path), so, providers=providers(device))
    except refused as e:    # a graph ONNX Runtime refuses (external data outside its directory, ...)
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise XoptError(f"{path}: ONNX Runtime cannot load this graph ({why}); rebuild it with `xopt compile`") from e


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

    from xopt.modeling import load_module
    from xopt.hf import load_tokenizer

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
        got = OrtRunner("export check", session(onnx_path), ckpt.output_names, onnx_path)(ids, mask)   # xopt's names
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


_FILE_HASHES: dict = {}      # (path, size, mtime_ns) -> sha256: a directory's files hashed once per process


def _file_hash(path: Path) -> str:
    from xopt.manifest import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def _identity(ckpt) -> str | None:
    """The checkpoint's weights, head and config hashes: from its manifest, or for a plain
    Hugging Face directory from its files (every safetensors shard and its index, config.json);
    None when neither names a weight file."""
    import hashlib

    files = ckpt.manifest.get("files", {})
    if files:
        files = {k: files.get(k) for k in ("model.safetensors", "head.safetensors", "config.json")}
    else:
        path = Path(ckpt.path)
        names = sorted(p.name for p in path.glob("*.safetensors*")) + ["config.json"]
        if len(names) == 1:
            return None
        files = {n: _file_hash(path / n) for n in names}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


_PREFIX = ".xopt-onnx-"


def _remove_dead_exports(under: Path) -> None:
    """Remove the export caches (`.xopt-onnx-PID-*`) under `under` whose process no longer runs."""
    for d in under.glob(f"{_PREFIX}*"):
        pid = d.name[len(_PREFIX):].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:      # another user's live process
            pass


class ExportCache:
    """ONNX exports (raw and fused) of checkpoints, kept while their owner builds variants.

    Building the ONNX and TensorRT variants of one checkpoint through one cache exports it
    once. Only the latest checkpoint's files are kept (each form holds all the model's
    weights, so keeping every checkpoint's would fill the disk); they live in a temp directory removed by `close()` (or on
    leaving the `with` block, or when the cache is garbage-collected). Callers link or copy
    the returned files, never modify them."""

    def __init__(self, under: Path | None = None):
        """`under`: the directory the exports live in (default: the temp dir); a pipeline passes
        its output, so a killed run's exports stay inside what it wrote, and the next cache made
        there removes those of processes that are gone."""
        import tempfile
        import weakref

        if under is not None:
            Path(under).mkdir(parents=True, exist_ok=True)
            _remove_dead_exports(Path(under))
        self.root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=under))
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

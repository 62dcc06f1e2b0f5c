"""`xopt export`: a compiled variant as a Triton Inference Server model repository
(`--format triton`), or a checkpoint in the Hugging Face layout of its head (`--format hf`,
`export_hf`; the layouts are described in `xopt.hf`).

```
REPO/
  <model_name>/
    config.pbtxt          backend/platform, inputs, outputs, batching, instance group
    1/model.onnx          (ONNX variants)  or  1/model.plan  (TensorRT engines)
    tokenizer.json ...    the variant's tokenizer files, for clients that tokenize themselves
    xopt-manifest.json    the variant's manifest: provenance, model card (input prefix, labels)
  <model_name>-tokenizer/ Python backend: TEXT -> the model's inputs, as `xopt eval` tokenises
    config.pbtxt          its outputs = the model's inputs; parameters input_prefix, max_length, pad_id
    1/model.py            xopt/triton_tokenizer.py (imports no xopt), 1/tokenizer.json
  <model_name>-ensemble/  platform "ensemble": TEXT -> tokenizer -> model -> the model's outputs
    config.pbtxt, 1/, README.md (how to call it), request.json (an HTTP/REST request body)
```

A model whose ONNX graph quantises activations at run time (DynamicQuantizeLinear: one scale
per tensor, over every row of the batch) gives a request outputs that depend on the requests
Triton's dynamic batcher puts beside it; its config.pbtxt and the ensemble's README say so.

What goes into `config.pbtxt` is read from the artefact, never assumed:
- ONNX variants (`onnx-fp32`, `onnx-int8`, `onnx-int8-static`, `ort-stock-int8`) run on Triton's `onnxruntime`
  backend; input/output names, element types and shapes come from the ONNX graph.
- TensorRT engines (`trt-fp16`, `trt-int8`) run on the `tensorrt_plan` platform; the engine's
  I/O is the ONNX graph it was parsed from (kept beside it, hashed in the manifest), and its
  batch range is the optimisation profile the manifest records. An engine directory without a
  recorded profile is refused: the batch range cannot be read back from the opaque engine
  without TensorRT.
- Which variants Triton loads, and how, is each family's to say: its registry entry's `serving`
  hook returns a `xopt.variants.base.ServingSpec` (platform, model file, the ONNX graph that
  describes its I/O, the largest batch it accepts).
- A leading dynamic axis is the batch axis: it is left out of `dims` and Triton batches
  requests along it (`max_batch_size` > 0, `dynamic_batching`).
- `max_batch_size` and `dynamic_batching` come from the variant's bench records when
  `results` is given (the largest batch benchmarked, the batch with the most sequences/s as the
  preferred one, a queue delay of a tenth of one request's median latency), else defaults.
- `instance_group` is KIND_CPU or KIND_GPU by the variant's device.

The model directory is written atomically (temp dir, fsync, rename). The model file (and an
ONNX model's external data files) is hard-linked from the variant directory when both are on
one file system, else copied.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

from xopt.errors import XoptError
from xopt.hf import CARD_FILE, DENSE_DIR, HEAD_KEYS, IDENTITY, POOLING_DIR, TOKENIZER_FILES, write_task_model

FORMATS = ("triton", "hf")
TEXT = "TEXT"                  # the ensemble's input: one UTF-8 string per row
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")     # what the tokenizer step fills
DYNAMIC_SCALE_OPS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul")   # activation scales taken per batch
CONFIG = "config.pbtxt"
VERSION = "1"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 100
# ONNX TensorProto element types -> Triton data types (model_config.proto DataType)
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                  11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


class Enum(str):
    """A protobuf enum value: written bare in text format (TYPE_FP32, KIND_GPU)."""


def _scalar(v) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v), ensure_ascii=False)   # text format takes UTF-8 and \" \\ \n escapes, not \uXXXX


def to_pbtxt(msg: dict, indent: int = 0) -> str:
    """A nested dict as protobuf text format, in Triton's own style: lists of scalars as
    `dims: [ -1, 64 ]`, lists of messages as `input [ { ... }, { ... } ]`."""
    pad = "  " * indent
    lines = []
    for key, v in msg.items():
        if v is None:
            continue
        if isinstance(v, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{pad}{key} [")
            for i, x in enumerate(v):
                lines += [f"{pad}  {{", to_pbtxt(x, indent + 2), f"{pad}  }}" + ("," if i < len(v) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(x) for x in v)} ]" if v else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(x for x in lines if x)


# ---------------------------------------------------------------------------------------
# What the artefact says

def onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph: name, Triton data type, shape (-1 = dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def tensors(values):
        out = []
        for v in values:
            if v.name in inits:
                continue   # old exporters list initializers among the inputs
            t = v.type.tensor_type
            if t.elem_type not in ONNX_TO_TRITON:
                raise XoptError(f"{path}: {v.name} has ONNX element type {t.elem_type}, which Triton has no type for")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "data_type": ONNX_TO_TRITON[t.elem_type], "shape": shape})
        return out

    return tensors(graph.input), tensors(graph.output)


def external_data_files(path: Path) -> list[str]:
    """Files an ONNX model keeps its large tensors in (beside it, named relative to it)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted({ExternalDataInfo(t).location for t in graph.initializer if uses_external_data(t)})


def _batched(tensors: list[dict]) -> bool:
    return all(t["shape"] and t["shape"][0] == -1 for t in tensors)


# ---------------------------------------------------------------------------------------
# What the bench records say

def batching_from_records(results: list[Path], variant: str, model: str) -> dict:
    """max_batch_size, preferred batch and queue delay from the variant's fixed-batch bench
    records (this model, this variant); {} when there are none."""
    from xopt import records as rs
    from xopt.records import shape_key

    recs, _ = rs.read(results)
    recs = [r for r in recs if r.get("kind") == "bench" and r.get("variant") == variant and r.get("model") == model
            and r.get("scenario") in (None, "fixed-batch") and r.get("batch")]
    if not recs:
        return {}
    by_shape: dict[str, dict[int, dict]] = {}
    for r in recs:   # a later record of the same batch and shape replaces an earlier one
        by_shape.setdefault(shape_key(r), {})[int(r["batch"])] = r
    # the shape benchmarked at the most batch sizes, seq 128 on a tie
    shape = max(by_shape, key=lambda s: (len(by_shape[s]), s == "s128"))
    rows = by_shape[shape]
    best = max(rows, key=lambda b: rows[b].get("throughput_seq_s") or 0.0)
    out = {"max_batch_size": max(b for s in by_shape.values() for b in s), "shape": shape,
           "preferred_batch_size": [best] if best > 1 else []}
    if 1 in rows and rows[1].get("p50_ms"):
        out["max_queue_delay_microseconds"] = max(1, round(rows[1]["p50_ms"] * 1000 * 0.1))
    return out


# ---------------------------------------------------------------------------------------
# The repository

def _exportable() -> dict:
    """Variant name -> its registry entry, for the variants whose artefact Triton loads."""
    from xopt.variants import REGISTRY

    return {n: v for n, v in REGISTRY.items() if v.serving is not None}


def model_name_for(man: dict) -> str:
    """<model>-<variant>, in the characters Triton accepts in a model directory name."""
    model = (man.get("model") or {}).get("name") or (man.get("source") or {}).get("name") or "model"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{man['variant']}").strip("-.")


def triton_config(variant_dir: Path, man: dict, name: str, batching: dict) -> tuple[dict, Path, str]:
    """(config as a dict, model file to put under 1/, its name there) for one variant."""
    variant = man["variant"]
    exportable = _exportable()
    if variant not in exportable:
        raise XoptError(f"{variant_dir}: variant {variant} has no artefact Triton loads; exportable variants: "
                        f"{', '.join(exportable)}")
    spec = exportable[variant].serving(variant_dir, man)
    src, dst, profile_max = spec.model_file, spec.file_name, spec.max_batch
    inputs, outputs = onnx_io(spec.io_graph)
    head = {"name": name, **spec.head}
    batched = _batched(inputs) and _batched(outputs)
    max_batch = 0
    if batched:
        max_batch = int(batching.get("max_batch_size") or DEFAULT_MAX_BATCH)
        if profile_max is not None:
            max_batch = min(max_batch, profile_max)
    strip = 1 if batched else 0

    def tensor(t):
        dims = t["shape"][strip:]
        row = {"name": t["name"], "data_type": Enum(t["data_type"]), "dims": dims or [1]}
        if not dims:   # one value per request: Triton wants dims [1], reshaped to the model's scalar
            row["reshape"] = {"shape": []}
        return row

    cfg = {**head, "max_batch_size": max_batch,
           "input": [tensor(t) for t in inputs], "output": [tensor(t) for t in outputs],
           "instance_group": [{"count": 1, "kind": Enum("KIND_GPU" if man.get("device") == "cuda" else "KIND_CPU")}]}
    if batched:
        preferred = [b for b in batching.get("preferred_batch_size", []) if b <= max_batch]
        cfg["dynamic_batching"] = {"preferred_batch_size": preferred or None,
                                   "max_queue_delay_microseconds": int(batching.get("max_queue_delay_microseconds",
                                                                                    DEFAULT_QUEUE_DELAY_US))}
    return cfg, src, dst


def dynamic_scales(src: Path) -> list[str]:
    """The ops of an ONNX graph that take int8 activation scales at run time, over the whole batch."""
    import onnx

    nodes = onnx.load(str(src), load_external_data=False).graph.node
    return sorted({n.op_type for n in nodes if n.op_type in DYNAMIC_SCALE_OPS})


def batching_note(ops: list[str]) -> str:
    """What dynamic batching does to a model whose activation scales are taken per batch."""
    return (f"int8 with activation scales computed at run time over the whole batch ({', '.join(ops)}): under "
            f"dynamic batching a request's outputs depend on the requests batched with it, and differ from the same "
            f"text sent alone. Remove dynamic_batching where answers must not depend on neighbours.")


def tokenizer_params(variant_dir: Path, man: dict) -> dict | None:
    """The tokenizer step's settings: the model card's input prefix and max length, and the pad id
    of the tokenizer xopt eval loads (xopt.batching.tokenize and pad use the same three); None
    without a tokenizer.json or a pad token (no ensemble then: clients tokenize)."""
    from xopt.modeling import ModelCard
    from xopt.hf import load_tokenizer

    if not (variant_dir / "tokenizer.json").is_file():
        return None
    pad_id = load_tokenizer(variant_dir).pad_token_id
    card = ModelCard.from_json(man.get("model") or {})
    return None if pad_id is None else {"input_prefix": card.input_prefix, "max_length": card.max_length,
                                        "pad_id": pad_id}


def ensemble_configs(name: str, cfg: dict, params: dict) -> tuple[dict, dict]:
    """(tokenizer step config, ensemble config) over model config `cfg`: TEXT -> `<name>-tokenizer`
    (its outputs are the model's inputs: names, types, dims) -> `name` -> the model's outputs."""
    unknown = [t["name"] for t in cfg["input"] if t["name"] not in TOKENIZER_INPUTS]
    if unknown:
        raise XoptError(f"{name}: input {unknown[0]} is none the tokenizer step fills ({', '.join(TOKENIZER_INPUTS)})")
    batch = cfg["max_batch_size"]
    text = {"name": TEXT, "data_type": Enum("TYPE_STRING"), "dims": [1] if batch else [-1]}
    same = lambda ts: [{"key": t["name"], "value": t["name"]} for t in ts]   # noqa: E731
    tok = {"name": f"{name}-tokenizer", "backend": "python", "max_batch_size": batch, "input": [text],
           "output": [dict(t) for t in cfg["input"]], "instance_group": [{"count": 1, "kind": Enum("KIND_CPU")}],
           "parameters": [{"key": k, "value": {"string_value": str(v)}} for k, v in params.items()]}
    steps = [{"model_name": tok["name"], "model_version": -1, "input_map": same([text]),
              "output_map": same(cfg["input"])},
             {"model_name": name, "model_version": -1, "input_map": same(cfg["input"]),
              "output_map": same(cfg["output"])}]
    ens = {"name": f"{name}-ensemble", "platform": "ensemble", "max_batch_size": batch, "input": [text],
           "output": [dict(t) for t in cfg["output"]], "ensemble_scheduling": {"step": steps}}
    return tok, ens


def ensemble_readme(tok: dict, ens: dict, params: dict, request: dict, note: str | None) -> str:
    """How to call the ensemble; `request` is the HTTP body written beside it as request.json."""
    outs = "\n".join(f"- `{o['name']}` {o['data_type']} dims {o['dims']}" for o in ens["output"])
    texts, shape = request["inputs"][0]["data"], request["inputs"][0]["shape"]
    return f"""# {ens['name']}: text in, the model's outputs out

One request runs `{tok['name']}` (Python backend: tokenises TEXT as `xopt eval` does: prefix
{params['input_prefix']!r}, the tokenizer's special tokens, truncation to {params['max_length']} tokens,
padding to the request's longest text with id {params['pad_id']}), then `{ens['ensemble_scheduling']['step'][1]['model_name']}`.
Send raw text, one string per row, without the prefix. The Python backend needs `tokenizers`
and numpy in tritonserver's Python (`pip install tokenizers`).

    curl -s localhost:8000/v2/models/{ens['name']}/infer -d @request.json

    import numpy as np, tritonclient.http as http
    client = http.InferenceServerClient("localhost:8000")
    text = http.InferInput("{TEXT}", {shape}, "BYTES")
    text.set_data_from_numpy(np.array({texts!r}, dtype=object).reshape({shape}))
    client.infer("{ens['name']}", [text]).as_numpy("{ens['output'][0]['name']}")

Outputs:
{outs}

Each request is padded to its own longest text, so the dynamic batcher joins only requests of one
padded length.{chr(10) + chr(10) + note if note else ''}
"""


def _write_ensemble(repo: Path, variant_dir: Path, tok: dict, ens: dict, params: dict, note: str | None,
                    force: bool) -> None:
    from xopt import manifest as mf
    from xopt.variants.base import link_or_copy

    texts = ["Open the file", "Datei kann nicht geöffnet werden"]
    request = {"inputs": [{"name": TEXT, "shape": [len(texts), 1] if ens["max_batch_size"] else [len(texts)],
                           "datatype": "BYTES", "data": texts}]}
    with mf.atomic_dir(repo / tok["name"], force=force) as tmp:
        (tmp / CONFIG).write_text(to_pbtxt(tok) + "\n", encoding="utf-8")
        (tmp / VERSION).mkdir()
        shutil.copyfile(Path(__file__).with_name("triton_tokenizer.py"), tmp / VERSION / "model.py")
        link_or_copy(variant_dir / "tokenizer.json", tmp / VERSION / "tokenizer.json")
    with mf.atomic_dir(repo / ens["name"], force=force) as tmp:
        (tmp / CONFIG).write_text(to_pbtxt(ens) + "\n", encoding="utf-8")
        (tmp / VERSION).mkdir()            # Triton wants a version directory, empty for an ensemble
        (tmp / "README.md").write_text(ensemble_readme(tok, ens, params, request, note), encoding="utf-8")
        _write_json(tmp / "request.json", request)


def export_triton(variant_dir: str | Path, repo: str | Path, name: str | None = None,
                  results: list[Path] | None = None, force: bool = False) -> dict:
    """Write `<repo>/<name>/` (config.pbtxt, 1/<model file>, tokenizer, manifest) for a
    variant; return a summary (path, config, where the batching came from)."""
    from xopt import manifest as mf
    from xopt.variants.base import TOKENIZER_FILES, link_or_copy

    variant_dir = Path(variant_dir)
    man = mf.read(variant_dir, kind="variant")   # checks every file against its hash
    name = name or model_name_for(man)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise XoptError(f"--name {name!r}: a Triton model name is letters, digits, '_', '-', '.'")
    model = (man.get("model") or {}).get("name") or (man.get("source") or {}).get("name")
    batching = batching_from_records([Path(p) for p in results], man["variant"], model) if results else {}
    cfg, src, dst = triton_config(variant_dir, man, name, batching)
    ops = dynamic_scales(src) if dst.endswith(".onnx") else []
    note = batching_note(ops) if ops and cfg.get("dynamic_batching") else None
    text = "".join(f"# {line}\n" for line in textwrap.wrap(note or "", 100)) + to_pbtxt(cfg) + "\n"
    params = tokenizer_params(variant_dir, man)
    tok, ens = ensemble_configs(name, cfg, params) if params else (None, None)
    out = Path(repo) / name
    for d in [out] + [Path(repo) / c["name"] for c in (tok, ens) if c]:
        if not force and (d.exists() or d.is_symlink()):   # before anything is written
            raise XoptError(f"{d} already exists; pass --force to replace it")
    with mf.atomic_dir(out, force=force) as tmp:
        (tmp / CONFIG).write_text(text, encoding="utf-8")
        (tmp / VERSION).mkdir()
        link_or_copy(src, tmp / VERSION / dst)
        if dst.endswith(".onnx"):   # a model over 2 GB keeps its weights in files beside it
            for f in external_data_files(src):
                if Path(f).is_absolute() or ".." in Path(f).parts:
                    raise XoptError(f"{variant_dir}: {src.name} points at weights outside its directory ({f}); "
                                    f"rebuild with `xopt compile --variant {man['variant']} --force`")
                if not (src.parent / f).is_file():
                    raise XoptError(f"{variant_dir}: {src.name} keeps weights in {f}, which is missing; rebuild "
                                    f"with `xopt compile --variant {man['variant']} --force`")
                (tmp / VERSION / f).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(src.parent / f, tmp / VERSION / f)
        for f in TOKENIZER_FILES:
            if (variant_dir / f).is_file():
                link_or_copy(variant_dir / f, tmp / f)
        (tmp / "xopt-manifest.json").write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
    if ens:
        _write_ensemble(Path(repo), variant_dir, tok, ens, params, note, force)
    return {"path": str(out), "name": name, "format": "triton", "config": cfg, "config_text": text,
            "batching_from": f"{len(results)} results file(s), shape {batching['shape']}" if batching else "defaults",
            "ensemble": ens["name"] if ens else None, "tokenizer": tok["name"] if tok else None,
            "batching_note": note}


def export(variant_dir: str | Path, fmt: str, out: str | Path, **kwargs) -> dict:
    """`xopt export`: dispatch on the format."""
    if fmt not in FORMATS:
        raise XoptError(f"--format {fmt}: known formats: {', '.join(FORMATS)}")
    if fmt == "hf":
        unused = [k for k, v in kwargs.items() if v and k != "force"]
        if unused:
            raise XoptError(f"--format hf writes a checkpoint; --{unused[0]} applies to --format triton only")
        return export_hf(variant_dir, out, force=kwargs.get("force", False))
    return export_triton(variant_dir, out, **kwargs)


def export_hf(ckpt_dir: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write checkpoint `ckpt_dir` in the Hugging Face layout of its head (`xopt.hf`'s module doc);
    returns what was written."""
    from xopt import manifest as mf
    from xopt.hf import portable_tokenizer_config
    from xopt.modeling import load_module, open_checkpoint

    ckpt = open_checkpoint(ckpt_dir)
    card = ckpt.card
    module = load_module(ckpt)
    labels = list(card.labels)
    out = Path(out)
    with mf.atomic_dir(out, force=force, kind="hf-export") as tmp:
        task_model = module.has_head and (card.head_layout == "hf" or card.head in HEAD_KEYS)
        if task_model:       # config.json with its id2label comes with the task model
            layout = write_task_model(module, card, tmp)
        else:
            layout = _write_sentence_transformers(module, card, ckpt.path, tmp)
        _write_json(tmp / CARD_FILE, card.to_json())      # what config.json cannot say: prefix, max length, task
        for name in TOKENIZER_FILES:
            if (ckpt.path / name).is_file():
                shutil.copyfile(ckpt.path / name, tmp / name)
        portable_tokenizer_config(tmp)     # a checkpoint saved by transformers 5 names its TokenizersBackend
    return {"path": str(out), "format": "hf", "layout": layout, "head": card.head, "labels": labels}


def _write_sentence_transformers(module, card, src: Path, tmp: Path) -> str:
    """An encoder (`<Arch>Model`) with the sentence-transformers modules over it: mean Pooling
    and, for xopt's linear sequence head, Dense; returns the layout's name.

    No Hugging Face task class computes mean pooling + one linear layer, so config.json names
    the encoder class and carries no `id2label`/`label2id`: with labels there, transformers'
    AutoModelForSequenceClassification and `pipeline("text-classification")` would load the
    directory without an error and a freshly initialised classifier. The labels live in the
    xopt card (`CARD_FILE`), which `xopt.hf.hf_card` reads back."""
    from safetensors.torch import save_file

    from xopt.quiet import quiet_imports

    with quiet_imports():
        from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(src))
    config.num_labels = 2     # transformers' default labels, left out of config.json (a source may carry its own)
    config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    config.label2id = {"LABEL_0": 0, "LABEL_1": 1}
    config.architectures = [type(module.encoder).__name__]
    config.save_pretrained(str(tmp))
    save_file({k: v.contiguous() for k, v in module.encoder.state_dict().items()
               if not k.endswith("position_ids")}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"}]
    hidden = config.hidden_size
    (tmp / POOLING_DIR).mkdir()
    _write_json(tmp / POOLING_DIR / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
    if module.has_head:
        (tmp / DENSE_DIR).mkdir()
        _write_json(tmp / DENSE_DIR / "config.json", {
            "in_features": hidden, "out_features": module.head.out_features, "bias": True,
            "activation_function": IDENTITY})
        save_file({f"linear.{k}": v.contiguous() for k, v in module.head.state_dict().items()},
                  str(tmp / DENSE_DIR / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": DENSE_DIR, "type": "sentence_transformers.models.Dense"})
    _write_json(tmp / "modules.json", modules)
    _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": card.max_length, "do_lower_case": False})
    prompt = {"prompts": {"query": card.input_prefix}, "default_prompt_name": "query"} \
        if card.input_prefix else {"prompts": {}}
    _write_json(tmp / "config_sentence_transformers.json", {**prompt, "similarity_fn_name": "cosine"})
    return "sentence-transformers (" + ", ".join(m["type"].rsplit(".", 1)[1] for m in modules) + ")"


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


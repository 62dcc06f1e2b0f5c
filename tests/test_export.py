"""`xopt export --format triton` on a tiny ONNX variant (and a TensorRT variant directory
whose engine is a placeholder: the export reads the manifest and the ONNX graph, never the
engine). config.pbtxt is checked against Triton's documented ModelConfig fields, and parsed
into Triton's own ModelConfig protobuf where the `tritonclient` package is installed."""

import importlib.util
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_manifest

from xopt import manifest as mf
from xopt import records
from xopt.cli import app
from xopt.errors import XoptError
from xopt.export import export, onnx_io

TEXTS = ["query: Open the file", "query: ファイルを開けません", "query: x"]

# model_config.proto (Triton Inference Server, ModelConfig and the messages config.pbtxt uses here)
FIELDS = {
    "": {"name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input", "output",
         "batch_input", "batch_output", "optimization", "dynamic_batching", "sequence_batching",
         "ensemble_scheduling", "instance_group", "default_model_filename", "cc_model_filenames",
         "metric_tags", "parameters", "model_warmup", "model_operations", "model_transaction_policy",
         "model_repository_agents", "response_cache"},
    "input": {"name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch",
              "optional"},
    "output": {"name", "data_type", "dims", "reshape", "label_filename", "is_shape_tensor"},
    "instance_group": {"name", "kind", "count", "rate_limiter", "gpus", "secondary_devices", "profile",
                       "passive", "host_policy"},
    "dynamic_batching": {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                         "priority_levels", "default_priority_level", "default_queue_policy",
                         "priority_queue_policy"},
    "parameters": {"key", "value"},            # map<string, ModelParameter>
    "value": {"string_value"},                 # ModelParameter
    "ensemble_scheduling": {"step"},
    "step": {"model_name", "model_version", "input_map", "output_map", "model_namespace"},
    "input_map": {"key", "value"}, "output_map": {"key", "value"},     # map<string, string>
}
DATA_TYPES = {"TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
              "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"}
KINDS = {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"}


def parse_pbtxt(text: str) -> dict:
    """The protobuf text-format subset config.pbtxt is written in, as {field: [values]}."""
    text = re.sub(r'^\s*#.*$', "", text, flags=re.M)                 # comment lines
    toks = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    pos = 0

    def value(tok):
        if tok.startswith('"'):
            return json.loads(tok)
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out: dict = {}
        while toks[pos] != end:
            key = toks[pos]
            pos += 1
            if toks[pos] == ":":
                pos += 1
            vals = []
            if toks[pos] == "[":
                pos += 1
                while toks[pos] != "]":
                    if toks[pos] == "{":
                        pos += 1
                        vals.append(message("}"))
                    else:
                        vals.append(value(toks[pos]))
                    pos += 1
                    if toks[pos] == ",":
                        pos += 1
            elif toks[pos] == "{":
                pos += 1
                vals.append(message("}"))
            else:
                vals.append(value(toks[pos]))
            pos += 1
            out.setdefault(key, []).extend(vals)
        return out

    toks.append("<end>")
    return message("<end>")


def check_schema(cfg: dict, scope: str = "") -> None:
    assert set(cfg) <= FIELDS[scope], f"{scope or 'ModelConfig'}: unknown fields {set(cfg) - FIELDS[scope]}"
    for key, vals in cfg.items():
        if key in FIELDS and key != scope and not (scope in ("input_map", "output_map") and key == "value"):
            for v in vals:
                check_schema(v, key)
        if key == "data_type":
            assert set(vals) <= DATA_TYPES
        if key == "kind":
            assert set(vals) <= KINDS
        if key in ("dims", "max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds", "count"):
            assert all(isinstance(v, int) for v in vals)
    if scope == "":
        assert len(cfg["name"]) == 1 and (cfg.get("backend") or cfg.get("platform"))


def check_against_graph(tensors: list[dict], graph: list[dict]) -> None:
    """config.pbtxt tensors (parsed) have the graph's names, types and shapes, less the batch axis."""
    assert [t["name"][0] for t in tensors] == [g["name"] for g in graph]
    for got, want in zip(tensors, graph):
        assert got["data_type"] == [want["data_type"]] and got["dims"] == want["shape"][1:]


def triton_model_config():
    """tritonclient's ModelConfig message class, loaded from its generated module alone
    (tritonclient.grpc's package import needs grpcio, which this parse does not); None when
    tritonclient is not installed."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        return None
    path = next(iter(spec.submodule_search_locations)) + "/grpc/model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.ModelConfig


@pytest.fixture(scope="module")
def onnx_variant(tiny_ckpt, tmp_path_factory):
    from xopt.variants import compile_variant

    out = tmp_path_factory.mktemp("variants") / "onnx-fp32"
    compile_variant(tiny_ckpt, "onnx-fp32", out)
    return out


def _inputs(variant_dir):
    from xopt.batching import pad, tokenize
    from xopt.hf import load_tokenizer

    tok = load_tokenizer(variant_dir)
    return pad(tokenize(tok, TEXTS), tok.pad_token_id)


def _with_manifest(src, dst, **changes):
    """A copy of variant dir `src` whose manifest has `changes` (re-signed)."""
    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man.update(changes)
    write_manifest(dst, man)
    return dst


def test_onnx_variant_exports_a_triton_repository(onnx_variant, tmp_path):
    import onnxruntime as ort

    from xopt.variants import load_variant

    done = export(onnx_variant, "triton", tmp_path / "repo")
    model = tmp_path / "repo" / done["name"]
    assert done["name"] == "tiny-onnx-fp32"
    assert (model / "config.pbtxt").is_file() and (model / "1" / "model.onnx").is_file()
    assert (model / "tokenizer.json").is_file() and (model / "xopt-manifest.json").is_file()
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]   # no temp dir left

    text = (model / "config.pbtxt").read_text()
    cfg = parse_pbtxt(text)
    check_schema(cfg)
    assert cfg["name"] == ["tiny-onnx-fp32"] and cfg["backend"] == ["onnxruntime"]
    assert cfg["max_batch_size"] == [32]
    assert cfg["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [100]

    # names, types and shapes are the graph's, less the batch axis
    ins, outs = onnx_io(onnx_variant / "model.onnx")
    check_against_graph(cfg["input"], ins)
    check_against_graph(cfg["output"], outs)
    assert [t["name"] for t in ins] == ["input_ids", "attention_mask"]
    assert cfg["input"][0]["data_type"] == ["TYPE_INT64"] and cfg["input"][0]["dims"] == [-1]
    assert {o["name"][0]: o["dims"] for o in cfg["output"]}["sentence_embedding"] == [64]

    ModelConfig = triton_model_config()
    if ModelConfig is not None:   # Triton's own schema, where tritonclient is installed
        from google.protobuf import text_format

        pb = text_format.Parse(text, ModelConfig())
        assert pb.backend == "onnxruntime" and pb.max_batch_size == 32
        assert [i.name for i in pb.input] == ["input_ids", "attention_mask"]
        assert list(pb.output[0].dims) == cfg["output"][0]["dims"]

    # the exported file is the variant's model: ONNX Runtime gives the runner's outputs
    ids, mask = _inputs(onnx_variant)
    ref = load_variant(onnx_variant).runner(ids, mask)
    sess = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)})
    for out, g in zip(sess.get_outputs(), got):
        np.testing.assert_allclose(g, ref[out.name], rtol=1e-5, atol=1e-5)


def test_batching_comes_from_the_bench_records(onnx_variant, tmp_path):
    def bn(batch, p50, variant="onnx-fp32", model="tiny", seq_len=128):
        return records.record("bench", model=model, variant=variant, batch=batch, seq_len=seq_len, p50_ms=p50,
                              p90_ms=p50, p99_ms=p50, mean_ms=p50, throughput_seq_s=1000 * batch / p50,
                              throughput_tok_s=128000 * batch / p50, peak_mem_mb=1.0, warmup=1, iters=10,
                              scenario="fixed-batch", device="cpu")

    recs = tmp_path / "r.jsonl"
    # batch 8 has the most sequences/s; batch 16 is slower per sequence; another variant's and
    # model's records are not this variant's
    records.append(recs, [bn(1, 2.0), bn(8, 8.0), bn(16, 20.0), bn(64, 1.0, variant="fp32"),
                          bn(64, 1.0, model="other")])
    done = export(onnx_variant, "triton", tmp_path / "repo", results=[recs], name="m")
    cfg = parse_pbtxt((tmp_path / "repo" / "m" / "config.pbtxt").read_text())
    check_schema(cfg)
    assert cfg["max_batch_size"] == [16]
    assert cfg["dynamic_batching"][0]["preferred_batch_size"] == [8]
    assert cfg["dynamic_batching"][0]["max_queue_delay_microseconds"] == [200]   # a tenth of batch 1's p50
    assert done["batching_from"].startswith("1 results file")


def _fake_trt(onnx_variant, dst, profile=True):
    """A trt-fp16 variant directory: the ONNX graph TensorRT would parse, and a placeholder
    engine (the export copies it, never opens it)."""
    d = dst
    d.mkdir()
    shutil.copy(onnx_variant / "model.onnx", d / "model.onnx")
    (d / "model.engine").write_bytes(b"placeholder engine")
    shutil.copy(onnx_variant / "tokenizer.json", d / "tokenizer.json")
    man = json.loads((onnx_variant / "manifest.json").read_text())
    trt = {"version": "10.13.0", "gpu": {"name": "NVIDIA H100", "capability": "sm_90"}}
    if profile:
        trt["profile"] = {"min": [1, 1], "opt": [32, 128], "max": [16, 512]}
    mf.write(d, kind="variant", source=man["source"],
             extra={"variant": "trt-fp16", "backend": "tensorrt", "precision": "fp16", "device": "cuda",
                    "model": man["model"], "tensorrt": trt})
    return d


def test_tensorrt_variant_exports_a_plan_on_gpu(onnx_variant, tmp_path):
    d = _fake_trt(onnx_variant, tmp_path / "trt")
    done = export(d, "triton", tmp_path / "repo")
    model = tmp_path / "repo" / done["name"]
    assert (model / "1" / "model.plan").read_bytes() == b"placeholder engine"
    text = (model / "config.pbtxt").read_text()
    cfg = parse_pbtxt(text)
    check_schema(cfg)
    assert cfg["platform"] == ["tensorrt_plan"] and "backend" not in cfg
    assert cfg["max_batch_size"] == [16]   # the profile's largest batch bounds the default
    assert cfg["instance_group"][0]["kind"] == ["KIND_GPU"]
    ins, outs = onnx_io(d / "model.onnx")
    assert [o["name"][0] for o in cfg["output"]] == [t["name"] for t in outs]
    ModelConfig = triton_model_config()
    if ModelConfig is not None:
        from google.protobuf import text_format

        assert text_format.Parse(text, ModelConfig()).platform == "tensorrt_plan"

    bare = _fake_trt(onnx_variant, tmp_path / "trt-noprofile", profile=False)
    with pytest.raises(XoptError, match="no TensorRT optimisation profile"):
        export(bare, "triton", tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists() or not any((tmp_path / "repo2").iterdir())


def test_cli_refuses_what_triton_cannot_load(onnx_variant, tmp_path):
    runner = CliRunner()
    eager = _with_manifest(onnx_variant, tmp_path / "fp32", variant="fp32", backend="torch")
    r = runner.invoke(app, ["export", str(eager), "--out", str(tmp_path / "repo")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "exportable variants: onnx-fp32, onnx-int8, onnx-int8-static, ort-stock-int8, trt-fp16, trt-int8" in lines[0]
    assert not (tmp_path / "repo" / "tiny-fp32").exists()

    r = runner.invoke(app, ["export", str(onnx_variant), "--format", "kserve", "--out", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "known formats: triton" in r.output

    r = runner.invoke(app, ["export", str(onnx_variant), "--out", str(tmp_path / "repo"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["config"]["backend"] == "onnxruntime"
    r = runner.invoke(app, ["export", str(onnx_variant), "--out", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "--force" in r.output


def test_external_data_travels_with_the_model(onnx_variant, tmp_path):
    """A model over 2 GB keeps its weights beside model.onnx; they go into 1/ with it."""
    import onnx
    import onnxruntime as ort

    d = tmp_path / "big"
    d.mkdir()
    model = onnx.load(str(onnx_variant / "model.onnx"))
    onnx.save_model(model, str(d / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=1024)
    shutil.copy(onnx_variant / "tokenizer.json", d / "tokenizer.json")
    man = json.loads((onnx_variant / "manifest.json").read_text())
    mf.write(d, kind="variant", source=man["source"], extra={k: man[k] for k in ("variant", "backend", "precision",
                                                                                 "device", "model")})
    done = export(d, "triton", tmp_path / "repo")
    version = tmp_path / "repo" / done["name"] / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    ids, mask = _inputs(onnx_variant)
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    want = ort.InferenceSession(str(onnx_variant / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)

    (d / "model.onnx.data").unlink()
    write_manifest(d, {**json.loads((d / "manifest.json").read_text()), "files": {}})
    with pytest.raises(XoptError, match="model.onnx.data, which is missing"):
        export(d, "triton", tmp_path / "repo2")


def test_export_is_listed_in_help():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "export" in r.output


def test_text_format_quoting_parses_back():
    from xopt.export import Enum, to_pbtxt

    cfg = {"name": 'a"b\\c', "input": [{"name": "Eingabe_ä", "data_type": Enum("TYPE_FP32"), "dims": [-1, 3]}],
           "output": [{"name": "score", "data_type": Enum("TYPE_FP32"), "dims": [1], "reshape": {"shape": []}}],
           "dynamic_batching": {"preferred_batch_size": None, "max_queue_delay_microseconds": 5}}
    got = parse_pbtxt(to_pbtxt(cfg))
    assert got == {"name": ['a"b\\c'], "input": [{"name": ["Eingabe_ä"], "data_type": ["TYPE_FP32"], "dims": [-1, 3]}],
                   "output": [{"name": ["score"], "data_type": ["TYPE_FP32"], "dims": [1], "reshape": [{"shape": []}]}],
                   "dynamic_batching": [{"max_queue_delay_microseconds": [5]}]}
    ModelConfig = triton_model_config()
    if ModelConfig is not None:
        from google.protobuf import text_format

        pb = text_format.Parse(to_pbtxt(cfg), ModelConfig())
        assert pb.name == 'a"b\\c' and pb.input[0].name == "Eingabe_ä" and list(pb.input[0].dims) == [-1, 3]
        assert pb.output[0].HasField("reshape") and list(pb.output[0].reshape.shape) == []


def test_export_sits_on_top():
    """Only the CLI imports xopt.export; xopt.export imports neither the CLI nor the pipeline."""
    import ast
    from pathlib import Path

    import xopt

    root = Path(xopt.__file__).parent
    for path in root.rglob("*.py"):
        names = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Import):
                names |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                names |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        if path.name == "export.py":
            assert not {m for m in names if m.startswith(("xopt.cli", "xopt.pipeline"))}
        elif path.name != "cli.py":
            assert "xopt.export" not in names, f"{path} imports xopt.export"


# ---------------------------------------------------------------------------------------
# The ensemble: TEXT -> tokenizer step (Triton Python backend) -> model

TRITON_TYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}


def fake_pb_utils():
    """The part of Triton's `triton_python_backend_utils` the tokenizer step calls, with Triton's
    signatures (tritonserver is not installed here)."""
    import types

    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._outputs, self._error = output_tensors, error

        def output_tensors(self):
            return self._outputs

        def has_error(self):
            return self._error is not None

    pb.Tensor, pb.InferenceResponse = Tensor, InferenceResponse
    pb.TritonError = type("TritonError", (Exception,), {})
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.triton_string_to_numpy = TRITON_TYPES.__getitem__
    return pb


def as_triton_json(cfg: dict) -> str:
    """A parsed config.pbtxt as the JSON Triton hands a Python model in args["model_config"]."""
    return json.dumps({"name": cfg["name"][0],
                       "parameters": {p["key"][0]: {"string_value": p["value"][0]["string_value"][0]}
                                      for p in cfg.get("parameters", [])},
                       "input": [{"name": t["name"][0], "data_type": t["data_type"][0], "dims": t["dims"]}
                                 for t in cfg["input"]],
                       "output": [{"name": t["name"][0], "data_type": t["data_type"][0], "dims": t["dims"]}
                                  for t in cfg["output"]]})


def load_tokenizer_step(model_dir, monkeypatch):
    """The exported model.py imported as tritonserver imports it, initialised with its config; and
    the fake triton_python_backend_utils it sees."""
    import importlib.util
    import sys

    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"triton_model_{model_dir.name}", model_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    step = mod.TritonPythonModel()
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    step.initialize({"model_config": as_triton_json(cfg), "model_repository": str(model_dir), "model_version": "1",
                     "model_name": model_dir.name})
    return step, pb


RAW = ["Open the file", "ファイルを開けません", "x", "Datei " * 300]       # the last one is cut at max length


def test_the_ensemble_tokenizes_as_xopt_eval(onnx_variant, tmp_path, monkeypatch):
    import onnxruntime as ort

    from xopt.batching import pad, tokenize
    from xopt.evaluate import run_texts
    from xopt.hf import load_tokenizer
    from xopt.variants import load_variant

    done = export(onnx_variant, "triton", tmp_path / "repo")
    repo = tmp_path / "repo"
    assert done["ensemble"] == "tiny-onnx-fp32-ensemble" and done["tokenizer"] == "tiny-onnx-fp32-tokenizer"
    model, tok, ens = (parse_pbtxt((repo / n / "config.pbtxt").read_text())
                       for n in (done["name"], done["tokenizer"], done["ensemble"]))
    for cfg in (model, tok, ens):
        check_schema(cfg)
    ModelConfig = triton_model_config()
    if ModelConfig is not None:   # Triton's own schema, where tritonclient is installed
        from google.protobuf import text_format

        for n in (done["tokenizer"], done["ensemble"]):
            text_format.Parse((repo / n / "config.pbtxt").read_text(), ModelConfig())
    # the step's outputs are the graph's inputs, the ensemble's outputs the graph's outputs
    ins, outs = onnx_io(onnx_variant / "model.onnx")
    check_against_graph(tok["output"], ins)
    check_against_graph(ens["output"], outs)
    assert tok["backend"] == ["python"] and ens["platform"] == ["ensemble"]
    assert tok["input"] == ens["input"] == [{"name": ["TEXT"], "data_type": ["TYPE_STRING"], "dims": [1]}]
    assert tok["max_batch_size"] == ens["max_batch_size"] == model["max_batch_size"]
    first, second = ens["ensemble_scheduling"][0]["step"]
    assert first["model_name"] == tok["name"] and second["model_name"] == model["name"]
    wire = lambda m: {e["key"][0]: e["value"][0] for e in m}                    # noqa: E731
    assert wire(first["input_map"]) == {"TEXT": "TEXT"}
    assert wire(first["output_map"]) == wire(second["input_map"]) == {t["name"]: t["name"] for t in ins}
    assert wire(second["output_map"]) == {t["name"]: t["name"] for t in outs}
    request = json.loads((repo / done["ensemble"] / "request.json").read_text())["inputs"][0]
    assert request["name"] == "TEXT" and request["datatype"] == "BYTES"
    assert request["shape"] == [len(request["data"]), 1]
    readme = (repo / done["ensemble"] / "README.md").read_text()
    assert done["ensemble"] in readme and "'query: '" in readme
    assert (repo / done["ensemble"] / "1").is_dir()

    # the step, run as tritonserver runs it, gives the ids xopt eval tokenises to
    step, pb = load_tokenizer_step(repo / done["tokenizer"], monkeypatch)
    texts = np.array([t.encode() for t in RAW], dtype=object).reshape(-1, 1)
    (resp,) = step.execute([{"TEXT": pb.Tensor("TEXT", texts)}])
    assert not resp.has_error()
    feeds = {t.name(): t.as_numpy() for t in resp.output_tensors()}
    hf = load_tokenizer(onnx_variant)
    card = load_variant(onnx_variant).card
    ids, mask = pad(tokenize(hf, RAW, card.input_prefix, card.max_length), hf.pad_token_id)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape[1] == card.max_length
    np.testing.assert_array_equal(feeds["input_ids"], ids)
    np.testing.assert_array_equal(feeds["attention_mask"], mask)
    # and those ids in the exported ONNX model give what xopt eval's own path gives for the texts
    sess = ort.InferenceSession(str(repo / done["name"] / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    want = run_texts(load_variant(onnx_variant), RAW)
    assert set(got) == set(want)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    (empty,) = step.execute([{"TEXT": pb.Tensor("TEXT", np.zeros((0, 1), dtype=object))}])
    assert empty.has_error()


def test_dynamic_int8_says_what_dynamic_batching_does(onnx_variant, tmp_path):
    """A graph that quantises activations at run time (ORT's quantize_dynamic, as ort-stock-int8 runs
    it on the onnx-fp32 graph) gets the note in its config.pbtxt and the ensemble's README; the
    float graph gets none."""
    from xopt.variants.onnx import stock_quantize_dynamic

    assert export(onnx_variant, "triton", tmp_path / "repo")["batching_note"] is None
    d = tmp_path / "int8"
    d.mkdir()
    for f in onnx_variant.iterdir():
        if f.name not in ("model.onnx", "manifest.json"):
            shutil.copy(f, d / f.name)
    stock_quantize_dynamic(onnx_variant / "model.onnx", d / "model.onnx")     # ort-stock-int8's recipe
    man = json.loads((onnx_variant / "manifest.json").read_text())
    mf.write(d, kind="variant", source=man["source"],
             extra={**{k: man[k] for k in ("backend", "device", "model")}, "variant": "ort-stock-int8",
                    "precision": "int8"})
    done = export(d, "triton", tmp_path / "repo")
    assert "DynamicQuantizeLinear" in done["batching_note"]
    text = (tmp_path / "repo" / done["name"] / "config.pbtxt").read_text()
    comment = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert "dynamic batching a request's outputs depend on the requests batched with it" in comment
    check_schema(parse_pbtxt(text))
    readme = (tmp_path / "repo" / done["ensemble"] / "README.md").read_text()
    assert "depend on the requests batched with it" in readme.replace("\n", " ")

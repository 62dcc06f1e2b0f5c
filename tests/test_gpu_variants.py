"""GPU variant families (cuda.py, unpadded.py, tensorrt.py): availability, refusal on a host
that cannot run them, the unpadded variants on CPU, and, under `gpu`/`tensorrt`, every GPU
variant on a tiny model against fp32 (cosine >= 0.99 for fp16/bf16, SQNR >= 20 dB for int8/fp8).
The unpadded variants (registry device "auto") run here on CPU and are checked against fp32 the
same way; on a GPU host the same test runs them on the Triton kernels."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_manifest

from xopt.cli import app
from xopt.errors import XoptError
from xopt.variants import REGISTRY, compile_variant, load_variant

# eager variants first: the compiled ones (torch.compile per shape bucket) take longest
GPU_FAMILY_VARIANTS = ["fp16", "bf16", "bnb-int8", "compile-cuda", "int8", "int8-smooth", "fp8", "trt-fp16", "trt-int8",
                       "torch-tensorrt"]
HAVE_CUDA = torch.cuda.is_available()
TEXTS = ["query: Open the file", "query: ファイルを開けません", "query: Пароль изменён", "query: x"]


_INPUTS = {}


def _inputs(ckpt):
    """The tokenised TEXTS, once per checkpoint (loading the 250k-piece tokenizer costs seconds)."""
    from xopt.batching import pad, tokenize
    from xopt.hf import load_tokenizer

    if ckpt not in _INPUTS:
        tok = load_tokenizer(ckpt)
        _INPUTS[ckpt] = pad(tokenize(tok, TEXTS), tok.pad_token_id)
    return _INPUTS[ckpt]


def sqnr_db(ref, got):
    return 10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))


@pytest.fixture(scope="module")
def fp32_dir(tiny_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpuvar") / "fp32"
    compile_variant(tiny_ckpt, "fp32", d)
    return d


@pytest.fixture(scope="module")
def fp32_ref(tiny_ckpt, fp32_dir):
    return load_variant(fp32_dir).runner(*_inputs(tiny_ckpt))


def test_every_gpu_variant_is_registered_with_a_reason_when_unavailable():
    assert set(GPU_FAMILY_VARIANTS) | {"unpadded", "unpadded-int8"} <= set(REGISTRY)
    res = CliRunner().invoke(app, ["variants", "--json"])
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for name in GPU_FAMILY_VARIANTS:
        v = REGISTRY[name]
        assert v.device == "cuda"
        assert rows[name]["available"] == (v.unavailable_reason() is None)
        if not HAVE_CUDA:
            assert not rows[name]["available"]
            assert "GPU" in rows[name]["reason"] or "package" in rows[name]["reason"], rows[name]
    assert REGISTRY["fp8"].min_capability == (8, 9)
    if "package" in (REGISTRY["bnb-int8"].unavailable_reason() or ""):
        table = CliRunner().invoke(app, ["variants"]).output
        assert "[gpu]" in table                          # the install hint survives the rich table
    assert all(rows[n]["available"] for n in ("unpadded", "unpadded-int8", "unpadded-int8-static"))  # CPU path


@pytest.mark.skipif(HAVE_CUDA, reason="checks the refusal on a host without CUDA")
@pytest.mark.parametrize("name", ["fp16", "int8"])
def test_gpu_variant_on_cpu_host_is_refused_in_one_line(name, fp32_dir, tiny_ckpt, tmp_path):
    # a directory as a GPU host would have built it (same files; only the variant differs)
    d = tmp_path / name
    shutil.copytree(fp32_dir, d)
    man = json.loads((d / "manifest.json").read_text())
    man.update(variant=name, device="cuda", precision=REGISTRY[name].precision)
    write_manifest(d, man)
    with pytest.raises(XoptError, match=f"variant {name} cannot run on this host: needs (an NVIDIA GPU|the)"):
        load_variant(d)
    res = CliRunner().invoke(app, ["bench", str(d), "--batch-size", "1", "--seq-len", "8"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("xopt: error:") and "cannot run on this host" in lines[0]
    with pytest.raises(XoptError, match="not available on this host"):
        compile_variant(tiny_ckpt, name, tmp_path / "new")
    assert not (tmp_path / "new").exists()


UNPADDED = ["unpadded", "unpadded-int8", "unpadded-int8-static"]


@pytest.mark.parametrize("name", UNPADDED)
def test_unpadded_variants_match_fp32_and_reload(name, tiny_ckpt, tiny_suite, fp32_ref, tmp_path):
    """Built, reloaded from disk, run on this host (CPU path here, Triton on a GPU) against fp32:
    cosine >= 0.99 (fp32/fp16), SQNR >= 20 dB (int8); manifest complete; padding changes nothing."""
    ids, mask = _inputs(tiny_ckpt)
    ref = fp32_ref
    v = REGISTRY[name]
    assert v.device == "auto" and v.unavailable_reason() is None
    opts = {"calib_data": str(tiny_suite), "calib_samples": 6, "calib_dev_samples": 2} if v.calibrated else None
    man = compile_variant(tiny_ckpt, name, tmp_path / name, options=opts)
    for key in ("xopt_version", "variant", "source", "precision", "backend", "calibration", "created", "host",
                "files"):
        assert key in man
    assert man["files"]["model.safetensors"] and (man["calibration"] is not None) == v.calibrated
    lv = load_variant(tmp_path / name)
    got = lv.runner(ids, mask)
    assert lv.runner.device == ("cuda" if HAVE_CUDA else "cpu")
    assert lv.runner.info["kernels"] == ("triton" if HAVE_CUDA else "torch")
    _tolerance_check(name, ref, got)
    if v.precision == "int8":
        assert lv.runner.info["quantized_linears"] == 2 * 3   # qkv, attn out, ffn in per layer; ffn out kept
        # counted from the int8 weights the encoder holds, not from the keep pattern
        assert lv.runner.info["quantized_ops"] == {"count": 6, "ops": {"xopt.kernels.int8_linear": 6}}
        assert lv.runner.info["kept"] == [f"encoder.encoder.layer.{i}.output.dense" for i in range(2)]
    else:
        assert "quantized_ops" not in lv.runner.info
    # a batch with more padding than tokens gives the same rows (nothing padded is computed)
    wide_ids = np.full((ids.shape[0], ids.shape[1] + 20), 1, dtype=np.int64)
    wide_mask = np.zeros_like(wide_ids)
    wide_ids[:, :ids.shape[1]], wide_mask[:, :ids.shape[1]] = ids, mask
    wide = lv.runner(wide_ids, wide_mask)
    np.testing.assert_allclose(wide["sentence_embedding"], got["sentence_embedding"], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- on a GPU

def _tolerance_check(name, ref, got):
    for out in ref:
        r, g = ref[out], got[out]
        assert g.shape == r.shape, out
        if REGISTRY[name].precision in ("int8", "fp8"):
            assert sqnr_db(r, g) >= 20, f"{name}/{out}: SQNR {sqnr_db(r, g):.1f} dB"
        else:
            cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1))
            assert cos.min() >= 0.99, f"{name}/{out}: cosine {cos.min():.4f}"


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU (torch sees none)")
@pytest.mark.parametrize("name", [n for n in GPU_FAMILY_VARIANTS if not n.startswith("trt")])
def test_gpu_variant_matches_fp32(name, tiny_ckpt, tiny_suite, fp32_ref, tmp_path):
    if reason := REGISTRY[name].unavailable_reason():
        pytest.skip(f"{name}: {reason}")
    ids, mask = _inputs(tiny_ckpt)
    ref = fp32_ref
    options = {"calib_data": str(tiny_suite), "calib_samples": 24, "calib_dev_samples": 8} \
        if REGISTRY[name].calibrated else {}
    if "mode" in REGISTRY[name].config.options():
        # CUDA graphs per shape bucket without GEMM autotuning (minutes per bucket on a cold cache):
        # the numerics and xopt's bucketing are under test here; bench/gpu_check.py runs the default mode
        options["mode"] = "reduce-overhead"
    compile_variant(tiny_ckpt, name, tmp_path / name, options=options or None)
    lv = load_variant(tmp_path / name)
    got = lv.runner(ids, mask)
    _tolerance_check(name, ref, got)
    alone = lv.runner(ids[3:4, :int(mask[3].sum())], mask[3:4, :int(mask[3].sum())])
    assert np.allclose(alone["sentence_embedding"][0], got["sentence_embedding"][3], atol=0.05 * max(
        1.0, np.abs(got["sentence_embedding"][3]).max()))


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.tensorrt
@pytest.mark.skipif(not (HAVE_TRT and HAVE_CUDA), reason="needs the tensorrt package and a CUDA GPU")
def test_trt_engines_and_foreign_engine_refused(tiny_ckpt, tiny_suite, fp32_ref, tmp_path):
    ids, mask = _inputs(tiny_ckpt)
    ref = fp32_ref
    man = compile_variant(tiny_ckpt, "trt-fp16", tmp_path / "trt", options={"opt": "4x16", "max": "8x64"})
    assert man["tensorrt"]["version"] and man["tensorrt"]["gpu"]["name"]
    _tolerance_check("trt-fp16", ref, load_variant(tmp_path / "trt").runner(ids, mask))
    m = json.loads((tmp_path / "trt" / "manifest.json").read_text())
    m["tensorrt"]["version"] = "0.0.1"
    write_manifest(tmp_path / "trt", m)
    with pytest.raises(XoptError, match="rebuild with `xopt compile"):
        load_variant(tmp_path / "trt")
    compile_variant(tiny_ckpt, "trt-int8", tmp_path / "trt8", options={
        "opt": "4x16", "max": "8x64", "calib_data": str(tiny_suite), "calib_samples": 24})
    _tolerance_check("trt-int8", ref, load_variant(tmp_path / "trt8").runner(ids, mask))


@pytest.mark.parametrize("model_type,head", [("bert", "sequence"), ("xlm-roberta", "token"), ("xlm-roberta", "span")])
def test_shape_buckets_do_not_change_any_output(model_type, head):
    """compile-cuda, int8 and fp8 pad every batch up to a shape bucket (CUDA graphs replay fixed
    shapes) and cut the outputs back. Run on the CPU with the eager module, the bucketed runner
    must give every output of every row exactly as the unpadded call does: masked attention,
    masked pooling, the filler rows, positions (XLM-R counts them from non-pad tokens)."""
    from test_kernels import _batch, _tiny

    from xopt.modeling import ModelCard, output_names
    from xopt.variants.cuda import BucketRunner
    from xopt.variants.eager import TorchRunner

    module = _tiny(model_type, head)
    names = output_names(ModelCard(labels=["a", "b", "c"], head=head) if head != "span" else ModelCard(head="span"))
    plain = TorchRunner("eager", module, names)
    bucketed = BucketRunner("bucketed", module, names, [1, 2, 4, 8], seq_multiple=16, max_length=40, pad_id=1,
                            device="cpu")
    for lengths in ([5, 1, 3], [17], [9, 9, 9, 9, 2]):
        ids, mask = (t.numpy() for t in _batch(lengths))
        ref = plain(ids, mask)
        got = bucketed(ids, mask)
        assert set(got) == set(ref) == set(names)
        for n in names:
            assert got[n].shape == ref[n].shape, n
            np.testing.assert_allclose(got[n], ref[n], rtol=1e-4, atol=1e-5, err_msg=n)
    assert bucketed.shapes == {(4, 16), (1, 32), (8, 16)} and bucketed.info["buckets"] == 3


def test_int8_smooth_profile_folds_back_to_the_fp32_function(tiny_ckpt, tiny_suite, tmp_path):
    """int8-smooth's build on any host: the SmoothQuant profile it saves matches the weights and,
    applied as its loader does (W * s, x / s), leaves the fp32 model's outputs unchanged; the
    int8 GEMMs that follow are torchao's (GPU test above)."""
    import torch

    from xopt.calibration.profile import Profile
    from xopt.modeling import load_module, open_checkpoint
    from xopt.variants.base import PROFILE_FILE
    from xopt.variants.cuda import _build_smooth

    ckpt = open_checkpoint(tiny_ckpt)
    v = REGISTRY["int8-smooth"]
    extra = _build_smooth(v, ckpt, tmp_path, v.configure({"calib_data": str(tiny_suite), "calib_samples": 6,
                                                          "calib_dev_samples": 2, "smoothquant_alpha": 0.5}))
    assert extra["calibration"]["method"].endswith("+smoothquant") and (tmp_path / "model.safetensors").is_file()
    prof = Profile.load(tmp_path / PROFILE_FILE)
    assert prof.smoothing["alpha"] == 0.5
    # the default smoothquant_layers: the Linears reading a LayerNorm output (q, k, v, FFN input)
    assert set(prof.smoothing["scales"]) == {n for n in prof.activations
                                             if n.endswith(("query", "key", "value", "intermediate.dense"))}
    module = load_module(ckpt)
    ids, mask = (torch.from_numpy(a) for a in _inputs(tiny_ckpt))
    with torch.inference_mode():
        ref = module(ids, mask)
    prof.check(module)
    prof.apply_smoothing(module)
    scales = np.concatenate([np.asarray(s) for s in prof.smoothing["scales"].values()])
    assert not np.allclose(scales, 1.0)                       # the weights really changed
    with torch.inference_mode():
        got = module(ids, mask)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
    with pytest.raises(XoptError, match="SmoothQuant calibration method"):
        v.configure({"calib_method": "minmax"})


@pytest.mark.parametrize("recipe", ["int8", "bnb-int8"])
def test_int8_recipes_quantise_the_right_linears_on_cpu(recipe, tiny_ckpt):
    """The library half of `int8` (torchao W8A8) and `bnb-int8` (bitsandbytes LLM.int8), run on
    the CPU, where both libraries run int8 too: every Linear but the kept ones (FFN output
    projections, head) is replaced by the library's int8 form and the model stays within the
    int8 tolerance of fp32 (SQNR >= 20 dB). Catches API drift in either library on hosts
    without a GPU; the GPU test above covers the compiled CUDA path."""
    lib = {"int8": "torchao", "bnb-int8": "bitsandbytes"}[recipe]
    if importlib.util.find_spec(lib) is None:
        pytest.skip(f"{lib} is not installed (pip install -e '.[test]' installs it)")
    from xopt.modeling import load_module, open_checkpoint
    from xopt.variants.base import torch_quantized_ops
    from xopt.variants.cuda import BnbConfig, TorchaoConfig, quantize_bnb, quantize_torchao

    ckpt = open_checkpoint(tiny_ckpt)
    ids, mask = (torch.from_numpy(a) for a in _inputs(tiny_ckpt))
    module = load_module(ckpt)
    with torch.inference_mode():
        ref = module(ids, mask)
    every = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if recipe == "int8":
        names = quantize_torchao(module, TorchaoConfig())
        is_int8 = lambda m: getattr(m.weight, "qdata", torch.empty(0)).dtype == torch.int8   # noqa: E731
    else:
        import bitsandbytes as bnb

        names = quantize_bnb(module, BnbConfig().keep, 6.0)
        module = module.to("cpu")                      # Int8Params quantise on the move
        is_int8 = lambda m: isinstance(m, bnb.nn.Linear8bitLt) and m.weight.dtype == torch.int8   # noqa: E731
    kept = set(every) - set(names)
    assert names and "head" in kept and any(n.endswith("output.dense") and "attention" not in n for n in kept)
    assert all(is_int8(module.get_submodule(n)) for n in names)
    assert not any(is_int8(module.get_submodule(n)) for n in kept)
    # what the loaders record: counted from the converted module, not from the names asked for
    ops, counted_kept = torch_quantized_ops(module)
    assert ops["count"] == len(names) and set(counted_kept) == kept
    with torch.inference_mode():
        got = module(ids, mask)
    for r, g in zip(ref, got):
        assert sqnr_db(r.numpy(), g.float().numpy()) >= 20


@pytest.mark.parametrize("method", ["percentile", "minmax+smoothquant"])
def test_trt_int8_qdq_onnx_is_symmetric_and_matches_fp32_in_onnxruntime(method, tiny_ckpt, tiny_suite, fp32_ref,
                                                                        tmp_path):
    """Everything trt-int8 does before TensorRT: calibration (xopt.calibration), explicit Q/DQ
    placement in the TensorRT form (int8, zero point 0, per-channel weights), checked by running
    the Q/DQ model in ONNX Runtime against fp32."""
    import onnx
    from onnx import numpy_helper

    from xopt.calibration.profile import Profile
    from xopt.modeling import open_checkpoint
    from xopt.variants.base import PROFILE_FILE
    from xopt.variants.onnx_export import ExportCache, session
    from xopt.variants.tensorrt import build_qdq_onnx

    config = REGISTRY["trt-int8"].configure({"calib_data": str(tiny_suite), "calib_samples": 6,
                                             "calib_dev_samples": 2, "calib_method": method,
                                             "smoothquant_alpha": 0.7})
    with ExportCache() as exports:
        extra = build_qdq_onnx(open_checkpoint(tiny_ckpt), tmp_path, config, exports)
        raw_muls = sum(n.op_type == "Mul" for n in onnx.load(str(exports.get(open_checkpoint(tiny_ckpt), fuse=False)),
                                                             load_external_data=False).graph.node)
    assert extra["calibration"]["samples"] == 6 and extra["calibration"]["method"] == method
    prof = Profile.load(tmp_path / PROFILE_FILE)
    assert prof.activations and bool(prof.smoothing) == method.endswith("smoothquant")
    g = onnx.load(str(tmp_path / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    # the same SmoothQuant profile as onnx-int8: one 1/s multiply per smoothed input (q, k, v share one)
    smooth_muls = sum(n.op_type == "Mul" for n in g.node) - raw_muls
    assert smooth_muls == (2 * 2 if prof.smoothing else 0)
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert qs and len(dqs) == len(qs) + len(extra["qdq"]["quantized"])    # activation pairs + one per weight
    for n in qs + dqs:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name                 # symmetric: zero point 0
    weight_dqs = [n for n in dqs if n.input[0] in inits]
    for n in weight_dqs:
        assert inits[n.input[0]].dtype == np.int8
        assert {a.name: a.i for a in n.attribute}.get("axis") == 1
        assert inits[n.input[1]].shape == (inits[n.input[0]].shape[1],)     # one scale per output channel
    # 2 layers x (Q, K, V, attention output, FFN input); FFN outputs (and the head) stay float
    assert len(extra["qdq"]["quantized"]) == 10 and len(extra["qdq"]["kept_fp"]) == 2
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.name in extra["qdq"]["kept_fp"]:
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)

    ids, mask = _inputs(tiny_ckpt)
    ref = fp32_ref
    got = session(tmp_path / "model.onnx").run(list(ref), {"input_ids": ids, "attention_mask": mask})
    for out, g_ in zip(ref, got):
        assert sqnr_db(ref[out], g_) >= 20, f"{out}: SQNR {sqnr_db(ref[out], g_):.1f} dB"


def test_torch_trt_partition_counts_engines_and_pytorch_fallback_ops():
    """The counting half of torch-tensorrt's fallback report, on a module shaped as its dynamo
    partitioner leaves it (TensorRT children `_run_on_acc_N`, PyTorch children `_run_on_gpu_N`)."""
    import torch

    from xopt.variants.tensorrt import torch_trt_partition

    def fallback(x):
        return torch.nn.functional.gelu(x).cumsum(-1) + torch.nn.functional.gelu(x)

    root = torch.nn.Module()
    root.add_module("_run_on_acc_0", torch.nn.Linear(4, 4))
    root.add_module("_run_on_gpu_1", torch.fx.symbolic_trace(fallback))
    root.add_module("_run_on_acc_2", torch.nn.Linear(4, 4))
    got = torch_trt_partition(root)
    assert got["trt_engines"] == 2
    assert got["fallback_ops"] == {"add": 1, "cumsum": 1, "gelu": 2}
    assert torch_trt_partition(torch.nn.Sequential(torch.nn.Linear(2, 2))) == {"trt_engines": 0, "fallback_ops": {}}

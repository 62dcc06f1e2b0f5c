"""Every CPU variant on a tiny model: built, reloaded, and checked against fp32."""

import json
import shutil
from pathlib import Path
from collections import Counter

import numpy as np
import pytest

from conftest import write_manifest

from xopt.errors import XoptError
from xopt.variants import REGISTRY, ExportCache, KeepPolicy, compile_variant, load_variant
from xopt.variants.openvino import has_bf16

# bf16 only where the CPU has it (tests/test_openvino.py checks the refusal elsewhere)
CPU_VARIANTS = [v.name for v in REGISTRY.values() if v.device == "cpu" and (v.precision != "bf16" or has_bf16())]
# Stock recipes registered as peers: built as their authors document them, not tuned by xopt.
# ORT's stock int8 quantises the classifier head too (xopt's int8 recipes keep it), which costs
# the tiny random model's logits a few dB; the floor for peers says what they reach.
PEER_SQNR_DB = {"ort-stock-int8": 15}
TEXTS = ["query: Open the file", "query: ファイルを開けません", "query: Пароль изменён", "query: x"]


def _inputs(ckpt):
    from xopt.batching import pad, tokenize
    from xopt.hf import load_tokenizer

    tok = load_tokenizer(ckpt)
    return pad(tokenize(tok, TEXTS), tok.pad_token_id)


def sqnr_db(ref, got):
    return 10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))


@pytest.fixture(scope="module")
def built(tiny_ckpt, tiny_suite, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    with ExportCache() as exports:
        return {name: compile_variant(tiny_ckpt, name, root / name, options={"calib_data": str(tiny_suite),
                                                                              "calib_samples": 24}
                                      if REGISTRY[name].calibrated else None, exports=exports) and root / name
                for name in CPU_VARIANTS}


@pytest.mark.parametrize("name", CPU_VARIANTS)
def test_variant_matches_fp32(name, built, tiny_ckpt):
    ids, mask = _inputs(tiny_ckpt)
    ref = load_variant(built["fp32"]).runner(ids, mask)
    lv = load_variant(built[name])
    got = lv.runner(ids, mask)
    assert set(got) == {"sentence_embedding", "layer_embedding", "logits"}
    man = lv.manifest
    for key in ("xopt_version", "variant", "source", "precision", "backend", "calibration", "created", "host",
                "files"):
        assert key in man
    assert man["source"]["weights_sha256"]
    for out in got:
        r, g = ref[out], got[out]
        assert g.shape == r.shape
        if REGISTRY[name].precision == "int8":
            assert sqnr_db(r, g) >= PEER_SQNR_DB.get(name, 20), f"{name}/{out}: SQNR {sqnr_db(r, g):.1f} dB"
        else:
            cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1))
            assert cos.min() >= 0.99, f"{name}/{out}: cosine {cos.min():.4f}"
    # padding must not change a row's result: the same text alone vs in a padded batch
    alone = lv.runner(ids[3:4, :int(mask[3].sum())], mask[3:4, :int(mask[3].sum())])
    tol = 0.05 if REGISTRY[name].precision == "int8" else 1e-3
    assert np.allclose(alone["sentence_embedding"][0], got["sentence_embedding"][3], atol=tol * max(
        1.0, np.abs(got["sentence_embedding"][3]).max()))


def test_calibrated_variant_records_its_calibration(built):
    cal = json.loads((built["onnx-int8-static"] / "manifest.json").read_text())["calibration"]
    assert cal["samples"] == 24 and cal["method"] == "minmax" and set(cal["languages"]) >= {"de", "ja", "ru"}
    assert len(cal["ids_sha256"]) == 64


def test_onnx_int8_static_is_qdq_and_keeps_ffn_output_in_fp32(built):
    import onnx

    g = onnx.load(str(built["onnx-int8-static"] / "model.onnx")).graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    kept = json.loads((built["onnx-int8-static"] / "manifest.json").read_text())["kept_fp32"]
    assert kept and all("output/dense" in k or "attention" in k or "head" in k for k in kept)
    assert sum("output/dense" in k and "attention" not in k for k in kept) == 2   # one FFN output per layer
    # a kept MatMul takes float inputs straight, not through a DequantizeLinear of a weight
    producers = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.name in kept:
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input[1:])


def test_stock_peer_is_onnx_runtimes_own_recipe(built, tiny_ckpt, tmp_path):
    """ort-stock-int8's graph is what a direct `quantize_dynamic` call on the same export gives."""

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from xopt.modeling import open_checkpoint

    with ExportCache() as exports:
        fused = exports.get(open_checkpoint(tiny_ckpt), fuse=True)
        quantize_dynamic(str(fused), str(tmp_path / "direct.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    def histogram(path):
        return Counter(n.op_type for n in onnx.load(str(path)).graph.node)

    ours, direct = histogram(built["ort-stock-int8"] / "model.onnx"), histogram(tmp_path / "direct.onnx")
    assert ours == direct
    # every Linear is quantised: attention in QAttention, the other 3 per layer and the head as MatMulInteger
    assert ours["QAttention"] == 2 and ours["MatMulInteger"] == 2 * 3 + 1 and ours["MatMul"] == 0



def test_fusion_with_the_embedding_table_set_aside_gives_ort_s_own_fused_model(tiny_ckpt, tmp_path):
    """fuse_bert runs the fusions on a stand-in word-embedding table and puts the real one back:
    the saved model equals what ONNX Runtime's optimizer gives on the whole export."""
    import onnx
    from onnxruntime.transformers import optimizer

    from xopt.modeling import open_checkpoint
    from xopt.variants import onnx_export as onnx_family

    ckpt = open_checkpoint(tiny_ckpt)
    onnx_family.export_onnx(ckpt, tmp_path / "raw.onnx")
    raw = onnx.load(str(tmp_path / "raw.onnx"))
    aside = onnx_family.set_aside_tables(raw)
    assert list(aside) == ["encoder.embeddings.word_embeddings.weight"]      # the table, nothing else
    assert [list(i.dims) for i in raw.graph.initializer if i.name in aside] == [[onnx_family.STAND_IN_ROWS, 64]]

    cfg = onnx_family._config(ckpt)
    onnx_family.fuse_bert(tmp_path / "raw.onnx", tmp_path / "ours.onnx", cfg)
    direct = optimizer.optimize_model(str(tmp_path / "raw.onnx"), model_type="bert", opt_level=0,
                                      num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
    direct.save_model_to_file(str(tmp_path / "direct.onnx"))
    ours = onnx.load(str(tmp_path / "ours.onnx"))
    assert ours == onnx.load(str(tmp_path / "direct.onnx"))
    assert Counter(n.op_type for n in ours.graph.node)["EmbedLayerNormalization"] == 1


def test_tables_are_not_put_back_under_a_name_the_graph_lost():
    from onnx import helper, numpy_helper

    from xopt.variants import onnx_export as onnx_family

    table = numpy_helper.from_array(np.ones((onnx_family.ASIDE_MIN_ELEMENTS // 8 + 5000, 8), np.float32), "emb")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", 7, ["n"])], [helper.make_tensor_value_info("y", 1, ["n", 8])], [table]))
    aside = onnx_family.set_aside_tables(model)
    assert list(aside) == ["emb"] and model.graph.initializer[0].dims[0] == onnx_family.STAND_IN_ROWS
    renamed = type(model)()
    renamed.CopyFrom(model)
    renamed.graph.initializer[0].name = "emb_renamed"
    assert not onnx_family.put_back_tables(renamed, aside)
    assert onnx_family.put_back_tables(model, aside) and model.graph.initializer[0] == table


def _fused_and_scales(tiny_ckpt, seed=0):
    """The tiny model's fused fp32 graph and SmoothQuant-like factors (random, positive, one
    vector per input group) for every Linear but the head."""
    import onnx

    from xopt.calibration.profile import input_groups, linear_names
    from xopt.modeling import load_module, open_checkpoint

    ckpt = open_checkpoint(tiny_ckpt)
    with ExportCache() as exports:
        model = onnx.load(str(exports.get(ckpt, fuse=True)))
    mods = dict(load_module(ckpt).named_modules())
    rng = np.random.default_rng(seed)
    scales = {}
    for group in input_groups([n for n in linear_names(load_module(ckpt)) if n != "head"]):
        s = np.exp(rng.normal(0, 1, mods[group[0]].in_features)).astype(np.float32)
        scales.update({n: s for n in group})
    return model, scales


def test_smoothing_the_fused_graph_keeps_its_function_and_its_fusions(tiny_ckpt, tmp_path):
    import onnx

    from xopt.variants.onnx_export import session
    from xopt.variants.onnx_graph import smooth_fused_graph

    model, scales = _fused_and_scales(tiny_ckpt)
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    before = Counter(n.op_type for n in model.graph.node)
    assert smooth_fused_graph(model, scales) == 2 * 4          # Attention, attn-out, ffn-in, ffn-out per layer
    onnx.save(model, str(tmp_path / "smoothed.onnx"))
    after = Counter(n.op_type for n in model.graph.node)
    assert after["Mul"] - before["Mul"] == 8 and after["Attention"] == before["Attention"] == 2
    assert after["SkipLayerNormalization"] == before["SkipLayerNormalization"]
    ids, mask = _inputs(tiny_ckpt)
    feed = {"input_ids": ids, "attention_mask": mask}
    ref = session(tmp_path / "fp32.onnx").run(None, feed)
    got = session(tmp_path / "smoothed.onnx").run(None, feed)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * np.abs(r).max())
    # the weights really changed: x / s times W * s, not the original W
    assert any(i.name.endswith("xopt_smooth_0") for i in model.graph.initializer)


def test_smoothing_refuses_qkv_factors_that_differ(tiny_ckpt):
    from xopt.variants.onnx_graph import smooth_fused_graph

    model, scales = _fused_and_scales(tiny_ckpt)
    q = next(n for n in scales if n.endswith("attention.self.query"))
    scales[q] = scales[q] * 2
    with pytest.raises(XoptError, match="different SmoothQuant factors.*share one input"):
        smooth_fused_graph(model, scales)


def test_onnx_int8_weight_width_follows_the_cpu_s_int8_dot_products(monkeypatch, capsys):
    import xopt.host
    from xopt.variants.onnx import _warn_saturation, int8_kernels

    monkeypatch.setattr(xopt.host, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})       # a Zen 3-like CPU
    assert int8_kernels("auto")["reduce_range"] is True and int8_kernels("auto")["weight_bits"] == 7
    assert int8_kernels(False)["reduce_range"] is False                 # forced
    _warn_saturation(Path("v"), int8_kernels(False), "cpu")
    assert "8-bit int8 weights" in capsys.readouterr().err
    _warn_saturation(Path("v"), int8_kernels(True), "cpu")
    assert "8-bit" not in capsys.readouterr().err
    monkeypatch.setattr(xopt.host, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})   # a Zen 4-like CPU
    assert int8_kernels("auto") == {"reduce_range": False, "weight_bits": 8, "built_on_int8_dot": True,
                                    "kernels": "VNNI (int32 accumulation)"}
    assert int8_kernels(True)["reduce_range"] is True
    _warn_saturation(Path("v"), int8_kernels("auto"), "cpu")
    assert "8-bit" not in capsys.readouterr().err
    assert REGISTRY["onnx-int8"].configure({"reduce_range": "true"}).reduce_range is True
    with pytest.raises(XoptError, match="auto, true or false"):
        REGISTRY["onnx-int8"].configure({"reduce_range": "sometimes"})


def test_onnx_int8_smooths_layernorm_inputs_and_sizes_weights_for_this_cpu(built):
    import onnx
    from onnx import numpy_helper

    from xopt.host import has_int8_dot

    man = json.loads((built["onnx-int8"] / "manifest.json").read_text())
    # SmoothQuant's default layers: a layer's fused QKV (Attention) and FFN input read LayerNorm outputs
    assert man["smoothed_matmuls"] == 2 * 2 and man["calibration"]["method"] == "minmax+smoothquant"
    assert man["quantized_ops"]["ops"].get("QAttention") == 2 and man["kept"] == ["head"]
    g = onnx.load(str(built["onnx-int8"] / "model.onnx")).graph
    w8 = [numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]
    assert len(w8) >= 2 + 2 * 3
    # without VNNI, reduce_range: |w| <= 64, so a uint8 x int8 pair sum (255 * 64 * 2) stays within int16;
    # with VNNI the full 8 bits (per-channel symmetric: each channel's largest weight is 127)
    reduce = not has_int8_dot()
    assert man["int8_kernels"]["reduce_range"] is reduce and man["int8_kernels"]["weight_bits"] == (7 if reduce else 8)
    top = max(np.abs(w.astype(np.int32)).max() for w in w8)
    assert top <= 64 if reduce else top == 127
    assert load_variant(built["onnx-int8"]).runner.info["int8_kernels"] == man["int8_kernels"]
    stock = onnx.load(str(built["ort-stock-int8"] / "model.onnx")).graph
    assert max(np.abs(numpy_helper.to_array(i).astype(np.int32)).max() for i in stock.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1) > 64


FFN_OUTS = ["encoder.encoder.layer.0.output.dense", "encoder.encoder.layer.1.output.dense"]
# variant -> (the fewest low-precision ops its tiny-model artefact may hold, the Linears it keeps).
# The tiny model has 2 layers of 6 Linears and a head. QAttention holds one layer's Q, K and V.
QUANTISED = {
    "onnx-int8": (2 + 2 * 2 + 2, ["head"]),                     # QAttention + attn-out, ffn-in, ffn-out per layer
    "onnx-int8-static": (2 * 5, FFN_OUTS + ["head"]),           # q, k, v, attn-out, ffn-in per layer
    "ort-stock-int8": (2 + 2 * 3 + 1, []),                      # everything, the head included
    "int8-dynamic": (2 * 5, FFN_OUTS + ["head"]),
    "openvino-int8": (2 * 6 + 1, []),                           # NNCF's transformer preset: every Linear
}


def test_every_cpu_int8_variant_is_listed_in_quantised():
    assert {n for n in CPU_VARIANTS if REGISTRY[n].precision == "int8"} == set(QUANTISED)


@pytest.mark.parametrize("name", list(QUANTISED))
def test_built_artefact_really_is_quantised(name, built):
    """Counted from the built artefact (ONNX Runtime's optimised graph, torch module types),
    stored in the manifest: at least the expected ops, and kept exactly the named layers."""
    man = json.loads((built[name] / "manifest.json").read_text())
    least, kept = QUANTISED[name]
    assert man["quantized_ops"]["count"] >= least, man["quantized_ops"]
    assert man["quantized_ops"]["count"] == sum(man["quantized_ops"]["ops"].values())
    assert sorted(man["kept"]) == sorted(kept)


@pytest.mark.parametrize("name", ["int8-dynamic", "onnx-int8-static"])
def test_quantised_variant_with_nothing_quantised_is_refused(name, tiny_ckpt, tiny_suite, tmp_path):
    opts = {"keep": "."}
    if REGISTRY[name].calibrated:
        opts |= {"calib_data": str(tiny_suite), "calib_samples": 8, "calib_dev_samples": 4}
    with pytest.raises(XoptError, match="runs no op in int8") as e:
        compile_variant(tiny_ckpt, name, tmp_path / "v", options=opts)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "v").exists() and list(tmp_path.iterdir()) == []


def test_tampered_variant_is_refused(built, tmp_path):
    d = tmp_path / "v"
    shutil.copytree(built["onnx-fp32"], d)
    with open(d / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(XoptError, match="does not match its manifest hash"):
        load_variant(d)


def test_unknown_variant_and_foreign_manifest(tiny_ckpt, built, tmp_path):
    with pytest.raises(XoptError, match="unknown variant 'fp64'"):
        compile_variant(tiny_ckpt, "fp64", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    d = tmp_path / "v"
    shutil.copytree(built["fp32"], d)
    man = json.loads((d / "manifest.json").read_text())
    man["variant"] = "tensorrt-from-the-future"
    write_manifest(d, man)
    with pytest.raises(XoptError, match="does not know"):
        load_variant(d)


def test_existing_output_refused_without_force(tiny_ckpt, built):
    with pytest.raises(XoptError, match="--force"):
        compile_variant(tiny_ckpt, "fp32", built["fp32"])


def test_registry_lists_availability():
    for v in REGISTRY.values():
        assert v.unavailable_reason() is None or isinstance(v.unavailable_reason(), str)
    assert {"fp32", "compile", "int8-dynamic", "onnx-fp32", "onnx-int8", "onnx-int8-static"} <= set(REGISTRY)


# ------------------------------------------------------------------ configs

@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_config_round_trips_through_json(name):
    v = REGISTRY[name]
    cfg = v.config
    blob = json.loads(json.dumps(cfg.to_json()))
    assert set(blob) == {"type", "version", "data"} and blob["type"] == type(cfg).__name__
    assert type(cfg).from_json(blob) == cfg
    assert cfg == type(cfg)()                     # a variant's defaults are its config class's own
    assert v.configure({}) == cfg and v.configure(None) == cfg and type(cfg).from_options({}) == cfg
    # every option can be given as the value it already has (what a plan file would write)
    given = {k: (val.pattern if isinstance(val, KeepPolicy) else val)
             for k, val in blob["data"].items() if val is not None}
    assert v.configure(given) == cfg
    with pytest.raises(XoptError, match=f"variant {name} does not take option no_such_option"):
        v.configure({"no_such_option": 1})
    other = {**blob, "type": "SomethingElse"}
    with pytest.raises(XoptError, match="rebuild"):
        type(cfg).from_json(other)


def test_inapplicable_and_malformed_options_are_one_line_errors(tiny_ckpt, tmp_path):
    from typer.testing import CliRunner

    from xopt.cli import app

    with pytest.raises(XoptError, match="variant fp32 does not take option calib_method"):
        compile_variant(tiny_ckpt, "fp32", tmp_path / "a", options={"calib_method": "minmax"})
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "fp32", "--out", str(tmp_path / "b"),
                                   "--calib-method", "entropy"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "--calib-method" in lines[0], res.output
    assert not (tmp_path / "b").exists()
    v = REGISTRY["onnx-int8"]
    with pytest.raises(XoptError, match="calib_samples = 'many': expected an integer|invalid literal"):
        v.configure({"calib_samples": "many"})
    with pytest.raises(XoptError, match="not a regular expression"):
        v.configure({"keep": "(unclosed"})
    with pytest.raises(XoptError, match="names ONNX nodes"):
        v.configure({"keep": r"layer\.\d+/output/dense/MatMul"})
    with pytest.raises(XoptError, match="unknown calibration method"):
        v.configure({"calib_method": "median"})
    with pytest.raises(XoptError, match="does not take option keep_fp16"):
        REGISTRY["unpadded-int8-static"].configure({"keep_fp16": 2})
    with pytest.raises(XoptError, match="does not take option keep_fp16"):
        REGISTRY["int8-smooth"].configure({"keep_fp16": 2})
    assert REGISTRY["trt-int8"].configure({"calib_method": "smoothquant"}).calib_method == "smoothquant"
    with pytest.raises(XoptError, match="smoothquant_layers.*not a regular expression"):
        REGISTRY["onnx-int8"].configure({"smoothquant_layers": "(query"})


def test_keep_policy_names_modules_and_maps_to_onnx_nodes():
    from xopt.calibration.profile import module_to_onnx_node

    keep = REGISTRY["onnx-int8-static"].config.keep
    assert keep.precision == "fp32" and REGISTRY["int8"].config.keep.precision == "fp16"
    assert REGISTRY["fp8"].config.keep.precision == "bf16" and REGISTRY["unpadded-int8"].config.keep.precision == "float"
    ffn_out, attn_out = "encoder.encoder.layer.3.output.dense", "encoder.encoder.layer.3.attention.output.dense"
    assert keep.keeps(ffn_out) and keep.keeps("head") and not keep.keeps(attn_out)
    assert keep.keeps_node(module_to_onnx_node(ffn_out)) and not keep.keeps_node(module_to_onnx_node(attn_out))
    assert keep.keeps_node("/head/Gemm") and keep.keeps_node("/head/Gemm_MatMul")
    assert not KeepPolicy("").keeps(ffn_out)
    assert keep.split([attn_out, ffn_out, "head"]) == ([attn_out], [ffn_out, "head"])


def test_manifest_records_the_config_and_old_manifests_are_refused(built, tmp_path):
    man = json.loads((built["onnx-int8"] / "manifest.json").read_text())
    assert man["config"]["type"] == "OnnxInt8Config" and man["config"]["data"]["calib_samples"] == 24
    assert load_variant(built["onnx-int8"]).config == REGISTRY["onnx-int8"].configure({"calib_samples": 24,
                                                                                       "calib_data": man["config"]["data"]["calib_data"]})
    d = tmp_path / "old"
    shutil.copytree(built["fp32"], d)
    old = json.loads((d / "manifest.json").read_text())
    del old["config"]
    old["options"] = {}
    write_manifest(d, old)
    with pytest.raises(XoptError, match="holds no variant config; rebuild it"):
        load_variant(d)


def test_keep_fp32_is_a_deprecated_alias_of_keep(tiny_ckpt, tmp_path):
    from typer.testing import CliRunner

    from xopt.cli import app

    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "int8-dynamic", "--out", str(tmp_path / "v"),
                                   "--keep-fp32", "^head$"])
    assert res.exit_code == 0, res.output
    assert "--keep-fp32 is deprecated" in res.output
    cfg = load_variant(tmp_path / "v").config
    assert cfg.keep == KeepPolicy("^head$", "fp32")
    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "compile", "--out", str(tmp_path / "c"),
                                   "-o", "mode=reduce-overhead", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["config"]["data"] == {"mode": "reduce-overhead"}
    res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "compile", "--out", str(tmp_path / "d"),
                                   "-o", "fuse=false"])
    assert res.exit_code == 2 and "variant compile does not take option fuse" in res.output
    assert load_variant(tmp_path / "v").runner.info["quantized_linears"] == 2 * 6   # every encoder Linear


def test_onnx_export_that_disagrees_with_pytorch_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    """The fp32 export is checked against eager PyTorch at build, with a stated tolerance: the
    built model records its worst cosine, and one below EXPORT_MIN_COSINE refuses the build."""
    from xopt.variants import onnx as onnx_family

    with ExportCache() as exports:
        man = compile_variant(tiny_ckpt, "onnx-fp32", tmp_path / "ok", exports=exports)
        worst = min(v["min_cosine"] for v in man["export_check"].values())
        assert worst >= onnx_family.EXPORT_MIN_COSINE
        real = onnx_family.check_against_torch

        def drifted(ckpt, path, texts=None):
            check = real(ckpt, path, texts)
            check["logits"] = {**check["logits"], "min_cosine": 0.93}
            return check

        monkeypatch.setattr(onnx_family, "check_against_torch", drifted)
        with pytest.raises(XoptError, match=r"disagrees with PyTorch: output logits has cosine 0\.930000") as e:
            compile_variant(tiny_ckpt, "onnx-fp32", tmp_path / "bad", exports=exports)
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()


def test_compile_shows_each_step_it_waits_on(tiny_ckpt, tiny_suite, tmp_path, monkeypatch):
    """Every opaque library call of an ONNX build runs under a progress step (calibration has its
    own bar over the batches)."""
    import contextlib

    from xopt.variants import onnx as onnx_family
    from xopt.variants import onnx_export

    seen = []

    @contextlib.contextmanager
    def recorder(description):
        seen.append(description)
        yield

    monkeypatch.setattr(onnx_family, "step", recorder)
    monkeypatch.setattr(onnx_export, "step", recorder)
    compile_variant(tiny_ckpt, "onnx-int8", tmp_path / "v", options={"calib_data": str(tiny_suite),
                                                                     "calib_samples": 8})
    assert seen == ["ONNX export", "ONNX Runtime fusions", "ONNX Runtime quantiser (dynamic)", "check against PyTorch"]


def test_onnx_fp32_device_cuda_selects_ort_s_cuda_provider_or_says_what_is_missing(tiny_ckpt, tmp_path, monkeypatch):
    import onnxruntime as ort
    from typer.testing import CliRunner

    from conftest import one_line_error
    from xopt.cli import app
    from xopt.variants import onnx_export as onnx_family

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        res = CliRunner().invoke(app, ["compile", str(tiny_ckpt), "--variant", "onnx-fp32", "--device", "cuda",
                                       "--out", str(tmp_path / "v")])
        assert "onnxruntime-gpu" in one_line_error(res) and not (tmp_path / "v").exists()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_family.providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_family.providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(XoptError, match="device 'tpu'"):
        REGISTRY["onnx-fp32"].configure({"device": "tpu"})


@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int8", "onnx-int8-static", "ort-stock-int8"])
def test_onnx_variant_dirs_carry_the_hf_config_with_labels(name, built, tiny_ckpt):
    from transformers import AutoConfig

    from xopt.modeling import open_checkpoint

    config = AutoConfig.from_pretrained(str(built[name]))
    labels = open_checkpoint(tiny_ckpt).card.labels
    assert config.id2label == dict(enumerate(labels)) and config.label2id == {k: i for i, k in enumerate(labels)}
    assert (built[name] / "tokenizer.json").is_file()

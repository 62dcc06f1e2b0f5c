"""Calibration: calibrators with known answers, calibration sets, profiles, SmoothQuant,
sensitivity and the fallback, the onnx-int8-static Q/DQ graph built from a profile, bad inputs."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import one_line_error
from xopt.calibration.calibrators import (Histogram, amax_entropy, amax_mse, amax_percentile, compute_amax,
                                          kl_divergences, tensor_range, uint8_qparams)
from xopt.errors import XoptError

# ------------------------------------------------------------------ calibrators (synthetic, known answers)


@pytest.fixture(scope="module")
def gauss_hist():
    x = np.random.default_rng(0).standard_normal(400_000).astype(np.float32)
    h = Histogram()
    for chunk in np.array_split(x, 40):   # grows from the first chunk's range
        h.update(chunk)
    return x, h


def test_percentile_of_a_normal_distribution(gauss_hist):
    x, h = gauss_hist
    # two-sided quantiles of |N(0,1)|: 99.9% -> 3.2905, 99.99% -> 3.8906
    assert amax_percentile(h, 99.9) == pytest.approx(3.2905, rel=0.02)
    assert amax_percentile(h, 99.99) == pytest.approx(3.8906, rel=0.03)
    assert compute_amax(h, "minmax") == pytest.approx(np.abs(x).max())
    assert h.counts.sum() == x.size


def test_percentile_agrees_with_onnxruntime_histogram_collector(gauss_hist):
    from onnxruntime.quantization.calibrate import HistogramCollector

    x, h = gauss_hist
    ort = HistogramCollector("percentile", symmetric=True, num_bins=2048, num_quantized_bins=128,
                             percentile=99.9, scenario="same")
    ort.collect_absolute_value({"x": x})
    lo, hi = ort.compute_percentile()["x"][:2]
    assert amax_percentile(h, 99.9) == pytest.approx(float(hi), rel=0.01)


def test_entropy_picks_the_kl_optimal_threshold_of_a_constructed_histogram():
    # bins 0..255: fine structure (alternating 1e6 / 5e5) that 256 levels represent exactly
    # and any coarser grid averages away; bins 256..2047: a sparse tail of one count each.
    # Clipping at bin 256 folds the tail (0.1% of the mass) into the last bin: small KL;
    # any larger threshold merges neighbouring core bins: KL ~ 0.057; smaller ones clip core.
    counts = np.ones(2048)
    counts[:256] = np.where(np.arange(256) % 2 == 0, 1e6, 5e5)
    cand, kl = kl_divergences(counts, start_bin=128)
    assert cand[np.argmin(kl)] == 256
    assert kl[cand == 2048][0] == pytest.approx((2 / 3) * np.log(4 / 3) + (1 / 3) * np.log(2 / 3), rel=0.05)
    h = Histogram()
    h.counts, h.width, h.min, h.max = counts.astype(np.int64), 0.01, 0.0, 20.48
    assert amax_entropy(h) == pytest.approx(2.56)


def test_mse_matches_brute_force_on_samples():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=200_000).astype(np.float32)
    h = Histogram()
    h.update(x)
    got = amax_mse(h)
    grid = np.linspace(4, 15, 111)
    err = [np.mean((x - np.clip(np.round(x / (a / 127)), -127, 127) * (a / 127)) ** 2) for a in grid]
    best = grid[int(np.argmin(err))]
    assert got == pytest.approx(best, rel=0.05)
    assert got < 0.85 * np.abs(x).max()          # clips the tail: not min-max
    u = np.random.default_rng(2).uniform(0, 1, 100_000).astype(np.float32)
    hu = Histogram()
    hu.update(u)
    assert 0.985 <= amax_mse(hu) <= 1.0          # uniform: clipping never pays (optimum 254/255)


def test_range_and_uint8_qparams_follow_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    h = Histogram()
    h.update(np.array([-0.17, 0.0, 3.0, 40.0], np.float32))
    rmin, rmax = tensor_range(h, 5.0)
    assert (rmin, rmax) == (pytest.approx(-0.17), 5.0)
    scale, zp = uint8_qparams(rmin, rmax)
    zp_ort, scale_ort = compute_scale_zp(np.array(rmin, np.float32), np.array(rmax, np.float32), np.array(0, np.uint8), np.array(255, np.uint8))
    assert scale == pytest.approx(float(scale_ort), rel=1e-6) and zp == int(zp_ort)


# ------------------------------------------------------------------ calibration sets

def test_calibration_set_is_balanced_with_a_disjoint_held_out_sample(tiny_suite):
    from xopt.calibration import CalibrationSet

    cs = CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_samples": 12, "calib_langs": "de,ja,ru",
                                      "calib_dev_samples": 6})
    assert len(cs.texts) == 12 and cs.langs == ["de", "ja", "ru"]
    assert [cs.lang_of[t] for t in cs.texts].count("ja") == 4
    assert cs.dev_texts and not set(cs.dev_texts) & set(cs.texts)
    assert {cs.lang_of[t] for t in cs.dev_texts} == {"de", "ja", "ru"}
    same = CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_samples": 12, "calib_langs": "de,ja,ru"})
    assert same.identity()["ids_sha256"] == cs.identity()["ids_sha256"]   # fixed seed
    en = CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_samples": 12, "calib_langs": "en"})
    assert en.identity()["ids_sha256"] != cs.identity()["ids_sha256"] and en.langs == ["en"]


def test_text_files_as_calibration_source(tmp_path):
    from xopt.calibration import CalibrationSet

    d = tmp_path / "texts"
    d.mkdir()
    (d / "de.txt").write_text("Datei öffnen\nSpeichern unter\n\nSchließen\n")
    (d / "ja.txt").write_text("ファイルを開く\n保存\n")
    cs = CalibrationSet.from_options({"calib_data": str(d), "calib_samples": 4, "calib_dev_samples": 0})
    assert cs.langs == ["de", "ja"] and len(cs.texts) == 4
    one = CalibrationSet.from_options({"calib_data": str(d / "de.txt"), "calib_samples": 2, "calib_langs": "de"})
    assert one.langs == ["de"] and len(one.texts) == 2


def test_xtreme_data_as_calibration_source():
    """English from the task's training set, other languages from their dev split: the texts are
    the fixtures' own sentences, in the languages the fixture holds."""
    from xopt.calibration import CalibrationSet
    from xopt.tasks import xtreme

    fx = Path(__file__).parent / "fixtures" / "xtreme"
    cs = CalibrationSet.from_options({"calib_data": f"xtreme:xnli:{fx}", "calib_samples": 8, "calib_langs": "all",
                                      "calib_dev_samples": 0})
    assert cs.langs == ["ar", "de", "en", "zh"] and len(cs.texts) == 8
    en_train = {xtreme.example_text(xtreme.TASKS["xnli"], e) for e in xtreme.load("xnli", "en", "train", fx)}
    zh_dev = {xtreme.example_text(xtreme.TASKS["xnli"], e) for e in xtreme.load("xnli", "zh", "dev", fx)}
    assert {t for t in cs.texts if cs.lang_of[t] == "en"} <= en_train
    assert {t for t in cs.texts if cs.lang_of[t] == "zh"} <= zh_dev
    with pytest.raises(XoptError, match="expected xtreme:TASK:DATA_DIR"):
        CalibrationSet.from_options({"calib_data": "xtreme:xnli", "calib_samples": 8})


def test_bad_calibration_sets(tiny_suite, tmp_path):
    from xopt.calibration import CalibrationSet

    with pytest.raises(XoptError, match=r"unknown calibration language code\(s\) qq"):
        CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_langs": "de,qq"})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(XoptError, match="empty calibration set"):
        CalibrationSet.from_options({"calib_data": str(empty)})
    with pytest.raises(XoptError, match="not found"):
        CalibrationSet.from_options({"calib_data": str(tmp_path / "nope.txt")})
    with pytest.raises(XoptError, match="must be positive"):
        CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_samples": 0})


# ------------------------------------------------------------------ profiles

@pytest.fixture(scope="module")
def other_ckpt(tiny_suite, tmp_path_factory):
    from conftest import make_tiny_checkpoint

    labels = json.loads(tiny_suite.read_text())["tasks"]["demo-topic"]["labels"]
    return make_tiny_checkpoint(tmp_path_factory.mktemp("other") / "other", labels, seed=1)


@pytest.fixture(scope="module")
def tiny_profile(tiny_ckpt, tiny_suite):
    from xopt.calibration.run import calibrate_checkpoint
    from xopt.modeling import open_checkpoint
    from xopt.variants.base import CalibratedConfig

    prof, module = calibrate_checkpoint(open_checkpoint(tiny_ckpt), CalibratedConfig(
        calib_data=str(tiny_suite), calib_samples=16, calib_method="percentile", calib_dev_samples=8))
    return prof


def test_profile_round_trip_and_contents(tiny_profile, tmp_path):
    from xopt.calibration.profile import Profile

    path = tiny_profile.save(tmp_path / "p.json")
    back = Profile.load(path)
    assert back.to_json() == json.loads(json.dumps(tiny_profile.to_json()))
    assert back.method == "percentile" and back.params["percentile"] == 99.99
    name = "encoder.encoder.layer.0.attention.self.query"
    a = back.activations[name]
    assert a["rmin"] <= 0 <= a["rmax"] and a["amax"] <= max(-a["observed_min"], a["observed_max"]) + 1e-6
    assert a["scale"] == pytest.approx((max(a["rmax"], 0) - min(a["rmin"], 0)) / 255)
    assert len(back.weights[name]["amax"]) == 64 and back.weights[name]["axis"] == 0
    assert back.calibration["samples"] == 16 and len(back.calibration["ids_sha256"]) == 64
    assert set(back.model["fingerprint"]) == set(back.activations)


def test_profile_of_another_model_is_refused_naming_tensors(tiny_profile, tmp_path, other_ckpt):
    import torch

    from xopt.calibration.profile import Profile
    from xopt.modeling import load_module, open_checkpoint

    other = load_module(open_checkpoint(other_ckpt))
    with pytest.raises(XoptError, match=r"different weights: encoder\.encoder\.layer\.0\.attention\.self\.query"):
        tiny_profile.check(other)
    with torch.no_grad():
        other.head = torch.nn.Linear(64, 3)
    bad = Profile.from_json(tiny_profile.to_json())
    bad.model = {**bad.model, "fingerprint": {**bad.model["fingerprint"], "encoder.layer.9.output.dense": "1x1:00"}}
    with pytest.raises(XoptError, match=r"not in this model: encoder\.layer\.9\.output\.dense"):
        bad.check(other)
    p = tmp_path / "junk.json"
    p.write_text('{"format": "something-else"}')
    with pytest.raises(XoptError, match="not an xopt calibration profile"):
        Profile.load(p)


def test_nan_activation_stops_calibration_naming_the_layer(tiny_ckpt):
    import torch

    from xopt.calibration.profile import calibrate_model, forward_loop_from_batches
    from xopt.modeling import load_module, open_checkpoint

    module = load_module(open_checkpoint(tiny_ckpt))
    with torch.no_grad():
        module.encoder.encoder.layer[1].intermediate.dense.weight[0, 0] = float("nan")
    ids = np.array([[0, 35378, 8999, 2]])
    loop = forward_loop_from_batches([(ids, np.ones_like(ids))])
    with pytest.raises(XoptError, match=r"NaN in the input of layer encoder\.encoder\.layer\.1\.output\.dense"):
        calibrate_model(module, loop)


def test_smoothing_keeps_the_full_precision_function(tiny_ckpt):
    import torch

    from xopt.calibration.profile import (apply_smoothing, collect_activation_stats, forward_loop_from_batches,
                                          smoothing_factors)
    from xopt.modeling import load_module, open_checkpoint

    module = load_module(open_checkpoint(tiny_ckpt))
    ids = torch.tensor([[0, 35378, 8999, 2, 6, 9]])
    ref = module(ids, torch.ones_like(ids))
    name = "encoder.encoder.layer.0.intermediate.dense"
    st = collect_activation_stats(module, forward_loop_from_batches([(ids.numpy(), np.ones((1, 6), np.int64))]),
                                  [name], channel_amax=True)[name]
    lin = dict(module.named_modules())[name]
    s = smoothing_factors(st.channel_amax, lin.weight, 0.5)
    # alpha 0.5: the smoothed input's and weight's per-channel maxima become equal
    w_after = (lin.weight.detach().abs().amax(0) * torch.as_tensor(s, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(st.channel_amax / s, w_after, rtol=1e-4)
    apply_smoothing(module, {name: s})
    got = module(ids, torch.ones_like(ids))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ onnx-int8-static from profiles

def _qdq_inputs(graph):
    """MatMul name -> (activation Q scale or None, weight DQ or None)."""
    prod = {o: n for n in graph.node for o in n.output}
    init = {i.name: i for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        a, w = prod.get(n.input[0]), prod.get(n.input[1])
        scale = None
        if a is not None and a.op_type == "DequantizeLinear":
            q = prod.get(a.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[1] in init:
                from onnx import numpy_helper

                scale = float(numpy_helper.to_array(init[q.input[1]]))
        out[n.name] = (scale, w if w is not None and w.op_type == "DequantizeLinear" else None)
    return out


@functools.lru_cache(maxsize=1)
def _tokenizer(path):
    from xopt.hf import load_tokenizer

    return load_tokenizer(path)   # seconds per load: once for this file


def _fp32_onnx_outputs(tiny_ckpt, model_path):
    from xopt.batching import pad, tokenize
    from xopt.variants.onnx_export import session

    tok = _tokenizer(tiny_ckpt)
    texts = ["query: Open the file", "query: ファイルを開けません", "query: Пароль изменён", "query: PNG image"]
    ids, mask = pad(tokenize(tok, texts), tok.pad_token_id)
    return session(model_path).run(None, {"input_ids": ids, "attention_mask": mask})


def test_qdq_model_from_a_saved_profile(tiny_ckpt, tiny_profile, tmp_path):
    import onnx

    from xopt.modeling import open_checkpoint
    from xopt.variants import ExportCache, compile_variant

    path = tiny_profile.save(tmp_path / "p.json")
    man = compile_variant(tiny_ckpt, "onnx-int8-static", tmp_path / "v", options={"calib_profile": str(path)})
    assert man["calibration"]["method"] == "percentile" and man["calibration"]["samples"] == 16
    g = onnx.load(str(tmp_path / "v" / "model.onnx")).graph
    qdq = _qdq_inputs(g)
    node = "/encoder/encoder/layer.1/intermediate/dense/MatMul"
    want = tiny_profile.activations["encoder.encoder.layer.1.intermediate.dense"]["scale"]
    assert qdq[node][0] == pytest.approx(want, rel=1e-6)          # the profile's scale, not ORT's own
    assert qdq[node][1] is not None                                # int8 weight, per channel
    with ExportCache() as exports:
        ref = _fp32_onnx_outputs(tiny_ckpt, exports.get(open_checkpoint(tiny_ckpt), fuse=False))
    got = _fp32_onnx_outputs(tiny_ckpt, tmp_path / "v" / "model.onnx")
    for r, q in zip(ref, got):
        sqnr = 10 * np.log10((r ** 2).sum() / ((r - q) ** 2).sum())
        assert sqnr >= 20, sqnr


def test_smoothquant_with_fallback_leaves_the_chosen_layers_unquantised(tiny_ckpt, tiny_suite, tmp_path):
    import onnx

    from xopt.calibration.profile import module_to_onnx_node
    from xopt.modeling import open_checkpoint
    from xopt.variants import ExportCache, compile_variant

    man = compile_variant(tiny_ckpt, "onnx-int8-static", tmp_path / "v", options={
        "calib_data": str(tiny_suite), "calib_samples": 8, "calib_dev_samples": 6,
        "calib_method": "smoothquant", "smoothquant_alpha": "0.3,0.8", "keep_fp16": 2})
    cal = man["calibration"]
    assert cal["method"] == "minmax+smoothquant" and cal["smoothquant_alpha"] in (0.3, 0.8)
    assert len(cal["keep"]) == 2 and sorted(man["fallback_fp32"]) == sorted(module_to_onnx_node(n) for n in cal["keep"])
    prof = json.loads((tmp_path / "v" / "calibration_profile.json").read_text())
    trials = {t["alpha"]: t["drop"] for t in prof["smoothing"]["trials"]}
    assert set(trials) == {0.3, 0.8} and trials[cal["smoothquant_alpha"]] == min(trials.values())
    ranked = [r["unit"] for r in prof["sensitivity"]]
    assert cal["keep"] == ranked[:2] and len(ranked) == 10       # q, k, v, attn-out, ffn-in x 2 layers
    assert all(a["drop"] >= b["drop"] for a, b in zip(prof["sensitivity"], prof["sensitivity"][1:]))
    g = onnx.load(str(tmp_path / "v" / "model.onnx")).graph
    qdq = _qdq_inputs(g)
    for name in cal["keep"]:
        scale, wdq = qdq[module_to_onnx_node(name)]
        assert scale is None and wdq is None                      # float in, float weight: unquantised
    quantised = [n for n in ranked if n not in cal["keep"]]
    assert all(qdq[module_to_onnx_node(n)][0] is not None for n in quantised)
    with ExportCache() as exports:
        raw = onnx.load(str(exports.get(open_checkpoint(tiny_ckpt), fuse=False))).graph
    muls = sum(n.op_type == "Mul" for n in g.node) - sum(n.op_type == "Mul" for n in raw.node)
    smoothed = prof["smoothing"]["scales"]
    assert sorted(smoothed) == sorted(n for n in ranked if n.endswith(("query", "key", "value", "intermediate.dense")))
    assert len(smoothed) == 2 * 4 and muls == 2 * 2               # one x / s per smoothed input (q, k, v share one)
    got = _fp32_onnx_outputs(tiny_ckpt, tmp_path / "v" / "model.onnx")
    assert all(np.isfinite(x).all() for x in got)


def test_profile_of_another_model_refused_at_compile_nothing_written(tiny_profile, tmp_path, other_ckpt):
    from xopt.variants import compile_variant

    path = tiny_profile.save(tmp_path / "p.json")
    with pytest.raises(XoptError, match=r"made for another model .*different weights: encoder\.encoder\.layer\.0"):
        compile_variant(other_ckpt, "onnx-int8", tmp_path / "v", options={"calib_profile": str(path)})
    assert not (tmp_path / "v").exists() and not list(tmp_path.glob(".v.tmp-*"))


def test_max_drop_keeps_the_most_sensitive_prefix(tiny_ckpt, tiny_suite):
    from xopt.calibration import CalibrationSet
    from xopt.calibration import sensitivity as sens
    from xopt.calibration.profile import calibrate_model, forward_loop_from_batches, linear_names
    from xopt.modeling import load_module, open_checkpoint

    ckpt = open_checkpoint(tiny_ckpt)
    module = load_module(ckpt)
    cs = CalibrationSet.from_options({"calib_data": str(tiny_suite), "calib_samples": 8, "calib_dev_samples": 8},
                                     tokenizer_dir=tiny_ckpt, input_prefix="query: ")
    prof = calibrate_model(module, forward_loop_from_batches(list(cs.batches())), "minmax")
    names = [n for n in linear_names(module) if n != "head"]
    batches = sens.dev_batches(cs.tokenizer, cs.dev_texts, "query: ")
    ref = sens.run_outputs(module, batches, ckpt.output_names)
    ranking = sens.rank(module, prof, batches, ckpt.output_names, names, "kind", ref)
    assert {r["unit"] for r in ranking} == {"attention.self.query", "attention.self.key", "attention.self.value",
                                            "attention.output.dense", "intermediate.dense", "output.dense"}
    assert all(len(r["layers"]) == 2 for r in ranking)              # one per encoder layer
    full = 100 - sens.fidelity(module, prof, batches, ckpt.output_names, ref, only=names)
    assert full > 0
    keep, drop = sens.choose_keep(module, prof, batches, ckpt.output_names, names, ranking, max_drop=full / 2,
                                  ref=ref)
    assert keep and drop <= full / 2
    prefix = [n for r in ranking[:len(keep) // 2] for n in r["layers"]]
    assert keep == prefix                                           # the most sensitive kinds, in rank order


# ------------------------------------------------------------------ CLI and report


def test_calibrate_command_and_its_bad_inputs(tiny_ckpt, tiny_suite, tmp_path):
    from typer.testing import CliRunner

    from xopt.cli import app

    run = CliRunner().invoke
    base = ["calibrate", str(tiny_ckpt), "--calib-data", str(tiny_suite), "--calib-samples", "8"]
    out = tmp_path / "p.json"
    assert "foo" in one_line_error(run(app, base + ["--out", str(out), "--calib-method", "foo"]))
    assert "xx" in one_line_error(run(app, base + ["--out", str(out), "--calib-langs", "de,xx"]))
    assert "percentile" in one_line_error(run(app, base + ["--out", str(out), "--calib-method", "mse:3"]))
    assert not out.exists() and not list(tmp_path.iterdir())
    res = run(app, base + ["--out", str(out), "--calib-method", "percentile:99.9", "--json"])
    assert res.exit_code == 0, res.output
    prof = json.loads(out.read_text())
    assert prof["method"] == "percentile" and prof["params"]["percentile"] == 99.9
    assert json.loads(res.stdout)["calibration"]["samples"] == 8
    assert "--force" in one_line_error(run(app, base + ["--out", str(out)]))


def test_query_key_value_share_one_smoothing_vector():
    import torch

    from xopt.calibration.profile import group_smoothing_factors, input_groups, smoothing_factors

    layer = "encoder.encoder.layer.0.attention"
    names = [f"{layer}.self.query", f"{layer}.self.key", f"{layer}.self.value", f"{layer}.output.dense", "head"]
    assert input_groups(names) == [names[:3], [names[3]], ["head"]]
    g = torch.Generator().manual_seed(0)
    w = {n: torch.randn(8, 6, generator=g) for n in names}
    w[names[1]][:, 2] *= 50                                   # a key weight column far above the others
    amax = {n: np.linspace(0.5, 8, 6) for n in names}
    s = group_smoothing_factors(amax, w, 0.5, names)
    assert all(np.array_equal(s[names[0]], s[n]) for n in names[1:3])
    assert s[names[0]][2] < smoothing_factors(amax[names[0]], w[names[0]], 0.5)[2]   # the stacked max rules
    np.testing.assert_allclose(s["head"], smoothing_factors(amax["head"], w["head"], 0.5))

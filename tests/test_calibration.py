"""Calibration: calibrators with known answers, calibration sets, profiles, SmoothQuant,
sensitivity and the fallback, the onnx-int8 Q/DQ graph built from a profile, bad inputs."""

import json

import numpy as np
import pytest

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
def tiny_profile(tiny_ckpt, tiny_suite):
    from xopt.calibration.run import calibrate_checkpoint
    from xopt.models import open_checkpoint

    prof, module = calibrate_checkpoint(open_checkpoint(tiny_ckpt), {
        "calib_data": str(tiny_suite), "calib_samples": 16, "calib_method": "percentile", "calib_dev_samples": 8})
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


def test_profile_of_another_model_is_refused_naming_tensors(tiny_profile, tmp_path, tiny_suite):
    import torch

    from xopt.calibration.profile import Profile
    from xopt.models import load_module, open_checkpoint
    from conftest import make_tiny_checkpoint

    labels = json.loads(tiny_suite.read_text())["tasks"]["demo-topic"]["labels"]
    other = load_module(open_checkpoint(make_tiny_checkpoint(tmp_path / "other", labels, seed=1)))
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

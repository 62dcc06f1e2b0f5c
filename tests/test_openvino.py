"""OpenVINO variants: built from the plain ONNX export, fp32 gives HF's outputs, bf16 is refused
on CPUs without bf16, NNCF's int8 really runs int8 (counted from the compiled runtime graph)."""

import numpy as np
import pytest

import hfmodels as H
from xopt.errors import XoptError
from xopt.variants import REGISTRY, compile_variant, load_variant

pytestmark = pytest.mark.skipif(REGISTRY["openvino-fp32"].unavailable_reason() is not None,
                                reason="openvino is a dependency: pip install -e '.[test]' -c constraints.txt")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov") / "xlmr-seq"
    m, tok = H.save_model("xlm-roberta", "sequence", d)
    b = tok(["the cat sat on the mat", "open the file please now"], ["un chat", "x"], padding=True,
            return_tensors="np")
    ids, mask = b["input_ids"].astype(np.int64), b["attention_mask"].astype(np.int64)
    return m, d, ids, mask, H.hf_outputs(m, "sequence", ids, mask)["logits"]


def test_fp32_gives_hf_s_logits_at_batch_1_and_batched(model, tmp_path):
    _, d, ids, mask, ref = model
    compile_variant(d, "openvino-fp32", tmp_path / "v")
    lv = load_variant(tmp_path / "v")
    assert np.abs(lv.runner(ids, mask)["logits"] - ref).max() <= 1e-4
    n = int(mask[1].sum())
    one = lv.runner(ids[1:2, :n], mask[1:2, :n])["logits"]        # another shape: dynamic axes
    assert np.abs(one - ref[1:2]).max() <= 1e-4


def test_bf16_is_refused_in_one_line_without_bf16(model, tmp_path, monkeypatch):
    from xopt import host

    _, d, ids, mask, ref = model
    own = host.cpu_flags()
    monkeypatch.setattr(host, "cpu_flags", lambda: own - {"avx512_bf16", "amx_bf16"})
    with pytest.raises(XoptError, match=r"openvino-bf16 is not available on this host: needs a CPU with avx512_bf16"):
        compile_variant(d, "openvino-bf16", tmp_path / "v")
    assert not (tmp_path / "v").exists()
    monkeypatch.setattr(host, "cpu_flags", lambda: own | {"avx512_bf16"})   # the IR builds anywhere
    compile_variant(d, "openvino-bf16", tmp_path / "v")
    monkeypatch.setattr(host, "cpu_flags", lambda: own)
    if own & {"avx512_bf16", "amx_bf16"}:
        got = load_variant(tmp_path / "v").runner(ids, mask)["logits"]
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
        assert cos.min() >= 0.99


def test_bf16_is_unavailable_on_a_host_without_bf16_so_the_demo_skips_it(monkeypatch):
    import xopt.host

    monkeypatch.setattr(xopt.host, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert "needs a CPU with avx512_bf16 or amx_bf16" in REGISTRY["openvino-bf16"].unavailable_reason()
    assert REGISTRY["openvino-int8"].unavailable_reason() is None
    monkeypatch.setattr(xopt.host, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert REGISTRY["openvino-bf16"].unavailable_reason() is None


def test_int8_is_nncf_s_stock_recipe_and_runs_int8(model, tiny_suite, tmp_path):
    _, d, ids, mask, ref = model
    man = compile_variant(d, "openvino-int8", tmp_path / "v", options={"calib_data": str(tiny_suite),
                                                                         "calib_samples": 16})
    assert man["quantized_ops"]["count"] >= 2 * 6 and man["calibration"]["method"] == "nncf-transformer-preset"
    got = load_variant(tmp_path / "v").runner(ids, mask)["logits"]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
    assert sqnr >= 10, sqnr


def test_one_checkpoint_is_converted_once_for_every_openvino_variant(model, tiny_suite, tmp_path, monkeypatch):
    """Through one ExportCache, the three variants of a checkpoint share one conversion (a plain
    HF directory is identified by its files' hashes; an xopt checkpoint by its manifest, as the
    ONNX export test in test_demo_pipeline shows): the float IRs are hard links of it, and int8
    quantises it."""
    import openvino as ov

    from xopt.variants import ExportCache

    d = model[1]
    calls = []
    real = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    names = ["openvino-fp32", "openvino-int8"] + (["openvino-bf16"] if REGISTRY["openvino-bf16"].unavailable_reason()
                                                  is None else [])
    with ExportCache() as exports:
        for name in names:
            opts = {"calib_data": str(tiny_suite), "calib_samples": 8} if REGISTRY[name].calibrated else None
            compile_variant(d, name, tmp_path / name, options=opts, exports=exports)
    assert len(calls) == 1
    if "openvino-bf16" in names:
        assert (tmp_path / "openvino-fp32" / "model.bin").samefile(tmp_path / "openvino-bf16" / "model.bin")
    for name in names:
        assert load_variant(tmp_path / name).manifest["variant"] == name       # each verifies and loads

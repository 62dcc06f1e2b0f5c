"""Batch invariance (xopt.invariance): measured by `xopt eval` on real variants, carried in the
eval records, shown in the report's variant table and in the pick's warnings."""

import json

import pytest

from test_report_pick import OUT, _write, ev

from xopt import pick, records, report
from xopt.evaluate import evaluate
from xopt.variants import ExportCache, compile_variant


@pytest.fixture(scope="module")
def evaluated(tiny_ckpt, tiny_suite, tmp_path_factory):
    """The demo eval records of fp32 and onnx-int8 of the tiny checkpoint, batch 64."""
    root = tmp_path_factory.mktemp("invariance")
    out = {}
    with ExportCache() as exports:
        for name in ("fp32", "onnx-int8"):
            compile_variant(tiny_ckpt, name, root / name, exports=exports)
            out[name] = evaluate(root / name, "demo", data=tiny_suite, batch_size=64)
    return out


def test_eval_records_say_how_far_batch_1_is_from_the_eval_batch(evaluated, tiny_suite):
    n_texts = len({e[k] for sets in json.loads(tiny_suite.read_text())["test"].values() for e in sets
                   for k in ("text", "source")})
    found = {}
    for name, recs in evaluated.items():
        got = [r["batch_invariance"] for r in recs]
        assert got and all(g == got[0] for g in got), name     # one measurement, on every record of the run
        found[name] = bi = got[0]
        assert bi["batch"] == min(64, n_texts) and bi["texts"] == 16
        assert set(bi["outputs"]) == {"sentence_embedding", "layer_embedding", "logits"}
        assert bi["max_abs_diff"] == bi["outputs"]["logits"]["max_abs_diff"]
        assert bi["invariant"] == all(o["max_abs_diff"] <= bi["tolerance"] * max(1, o["max_abs"])
                                      for o in bi["outputs"].values())
    fp32, int8 = found["fp32"], found["onnx-int8"]
    assert fp32["invariant"] and fp32["activation_scales"] is None
    assert fp32["argmax_agreement"] == 1.0 and fp32["min_cosine"] > 0.99999
    assert max(o["max_abs_diff"] for o in fp32["outputs"].values()) <= 1e-5
    # ONNX Runtime's dynamic int8 takes one activation scale over the whole batch: its rows move
    assert int8["activation_scales"] == "dynamic per tensor"
    assert max(o["max_abs_diff"] for o in int8["outputs"].values()) > 1e-5


def _varying(batch=64):
    return {"batch": batch, "texts": 16, "max_abs_diff": 0.18, "max_abs_diff_of": "logits",
            "argmax_agreement": 0.975, "min_cosine": 0.998, "invariant": False, "tolerance": 1e-4,
            "activation_scales": "dynamic per tensor", "outputs": {}, "seconds": 0.1}


def test_report_table_and_pick_say_which_variant_is_not_batch_invariant(tmp_path):
    same = {**_varying(), "max_abs_diff": 1e-7, "argmax_agreement": 1.0, "min_cosine": 1.0, "invariant": True,
            "activation_scales": None}
    recs = [ev(m, v, lang, o, batch_invariance=_varying() if v == "int8" else same) for (m, v, lang), o in OUT.items()]
    path = _write(tmp_path, recs)
    text = report.write_report([path], tmp_path / "rep").read_text()
    assert "batch invariant (b1 vs eval batch)" in text
    assert "no (Δ 0.2, argmax 97.5%)" in text and "yes (Δ 1e-07)" in text
    assert ("int8: max |Δ logits| 0.18 between batch 1 and batch 64, argmax agreement 97.5%, min cosine 0.99800 "
            "over 16 texts (dynamic per tensor activation scales)") in text
    choice = pick.pick([path])
    assert choice["chosen"]["variant"] == "int8"     # faster: a warning, not a failed constraint
    assert len(choice["chosen"]["warnings"]) == 1 and "not batch invariant" in choice["chosen"]["warnings"][0]
    assert [c["warnings"] for c in choice["candidates"] if c["variant"] == "fp32"] == [[]]
    assert "  warning: not batch invariant: max |Δ logits| 0.18" in pick.render(choice)


def test_records_without_the_measurement_read_as_not_measured(tmp_path):
    path = _write(tmp_path)
    text = report.write_report([path], tmp_path / "rep").read_text()
    assert "batch invariant (b1 vs eval batch)" in text and "Not batch invariant" not in text
    assert all(not c["warnings"] for c in pick.pick([path])["candidates"])
    assert "batch_invariance" in records.EvalRecord.__dataclass_fields__

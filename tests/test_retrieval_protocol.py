"""Retrieval protocols (--retrieval-layer): parsing, records that carry layer and pooling, a report
that never averages two protocols, and the closing paragraph generated from records."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from test_report_pick import bn, ev
from xopt import analysis, pick, records, report
from xopt.cli import app
from xopt.errors import XoptError
from xopt.evaluate import parse_retrieval_layer, resolve_retrieval_layer
from xopt.pick import Budget


# ------------------------------------------------------------------ parsing and resolving

@pytest.mark.parametrize("text, want", [("middle", "middle"), ("last", "last"), (" Last ", "last"), ("0", 0),
                                        ("6", 6), (3, 3)])
def test_retrieval_layer_parses_middle_last_and_numbers(text, want):
    assert parse_retrieval_layer(text) == want


@pytest.mark.parametrize("bad", ["top", "-1", "1.5", "", "mid dle", True])
def test_bad_retrieval_layer_is_one_line(bad):
    with pytest.raises(XoptError) as e:
        parse_retrieval_layer(bad)
    msg = str(e.value)
    assert "\n" not in msg and "--retrieval-layer" in msg and "middle" in msg and "last" in msg


def test_retrieval_layer_resolves_to_the_output_that_pools_it():
    v = resolve_retrieval_layer("middle", 12)
    assert (v.output, v.layer, v.num_layers, v.pooling) == ("layer_embedding", 6, 12, "mean")
    assert v.fields() == {"retrieval_layer": 6, "num_layers": 12, "pooling": "mean"} and v.protocol == "L6-mean"
    assert "XTREME" in v.describe()
    last = resolve_retrieval_layer("last", 12)
    assert (last.output, last.layer, last.protocol) == ("sentence_embedding", 12, "L12-mean")
    assert resolve_retrieval_layer("6", 12).output == "layer_embedding"
    assert resolve_retrieval_layer(12, 12).output == "sentence_embedding"
    # a model card that pools another layer for layer_embedding
    assert resolve_retrieval_layer(3, 12, card_layer=3).output == "layer_embedding"
    for spec, card_layer, words in ((3, None, "layers 6 and 12 only"), (13, None, "has 12 layers"),
                                    ("middle", 3, "layers 3 and 12 only")):
        with pytest.raises(XoptError) as e:
            resolve_retrieval_layer(spec, 12, card_layer)
        assert words in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ records carry layer and pooling

def test_eval_records_carry_layer_and_pooling(tmp_path, tiny_ckpt, tiny_suite, monkeypatch):
    from xopt.tasks.families import RetrievalFamily

    seen = []          # the demo's retrieval goes through XTREME's Tatoeba code: one code path
    real = RetrievalFamily.evaluate

    def spy(self, task, *a, **kw):
        seen.append((task.name, kw.get("output")))
        return real(self, task, *a, **kw)

    monkeypatch.setattr(RetrievalFamily, "evaluate", spy)
    run = CliRunner().invoke
    v = tmp_path / "fp32"
    assert run(app, ["compile", str(tiny_ckpt), "--variant", "fp32", "--out", str(v)]).exit_code == 0
    assert json.loads((v / "manifest.json").read_text())["model"]["num_layers"] == 2
    args = ["eval", str(v), "--suite", "demo", "--data", str(tiny_suite), "--langs", "de,ja"]
    assert "--retrieval-layer 'top'" in one_line_error(run(app, args + ["--retrieval-layer", "top"]))
    assert "outputs the mean-pooled layers" in one_line_error(run(app, args + ["--retrieval-layer", "0"]))
    out = tmp_path / "r.jsonl"
    for layer in ("middle", "last"):
        res = run(app, args + ["--retrieval-layer", layer, "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert seen == [("tatoeba", "layer_embedding")] * 2 + [("tatoeba", "sentence_embedding")] * 2   # de, ja
    recs, _ = records.read([out], strict=True)
    assert all(r["schema"] == records.SCHEMA_VERSION == 2 for r in recs)
    retr = [r for r in recs if r["task"] == "demo-retrieval"]
    assert {(r["retrieval_layer"], r["num_layers"], r["pooling"]) for r in retr} == {(1, 2, "mean"), (2, 2, "mean")}
    assert {(r["lang"], r["retrieval_layer"]) for r in retr} >= {("de", 1), ("ja", 1), ("avg", 1), ("de", 2)}
    per_lang = [r for r in retr if r["lang"] != "avg"]
    assert all(r["outcome_kind"] == "mean" and set(r["outcomes"]) <= {0.0, 1.0} and "Tatoeba" in r["note"]
               for r in per_lang)
    assert all("retrieval_layer" not in r for r in recs if r["task"] == "demo-topic")
    # the second run appended only the last-layer protocol's retrieval units next to the first's
    t = analysis.load([out], analysis.Comparison(baseline="tiny", xstilts="nobody"))
    assert set(t.tasks()) == {"demo-topic", "demo-retrieval@L1-mean", "demo-retrieval@L2-mean"}
    # the eval table labels the protocol
    res = run(app, args + ["--retrieval-layer", "last", "--tasks", "demo-retrieval"])
    assert res.exit_code == 0 and "demo-retrieval@L2-mean" in res.output


def test_schema_1_records_stay_readable_under_the_bare_task_name(tmp_path):
    old = {**ev("baseline", "fp32", "de", [1, 0], task="tatoeba"), "schema": 1}
    new = ev("baseline", "fp32", "de", [1, 1], task="tatoeba", retrieval_layer=6, num_layers=12, pooling="mean")
    p = tmp_path / "r.jsonl"
    records.append(p, [old, new])
    recs, skipped = records.read([p])
    assert len(recs) == 2 and not skipped
    assert [analysis.task_label(r) for r in recs] == ["tatoeba", "tatoeba@L6-mean"]
    with pytest.raises(records.RecordError, match="retrieval_layer"):
        records.validate({**new, "retrieval_layer": "middle"})


# ------------------------------------------------------------------ the report never averages two protocols

def _outcomes(rate: float, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < rate).astype(float).tolist()


MID = dict(retrieval_layer=6, num_layers=12, pooling="mean")
LAST = dict(retrieval_layer=12, num_layers=12, pooling="mean")


def _records(topic_gain: float, n: int = 300, peers=(("ort-stock-int8", 5.0),)) -> list:
    """baseline/xstilts x fp32/onnx-int8/ort-stock-int8 on de, ja (the same outcomes on every variant):
    demo-topic with `topic_gain` (0: X-STILTs' outcomes are the baseline's), and
    demo-retrieval under two protocols: a loss at the middle layer, a gain at the last."""
    recs = []
    for seed, lang in enumerate(("de", "ja")):
        base = _outcomes(0.5, n, seed)
        gained = _outcomes(0.5 + topic_gain, n, seed + 100) if topic_gain else base
        for variant in ("fp32", "onnx-int8", "ort-stock-int8"):
            recs += [ev("baseline", variant, lang, base, task="demo-topic"),
                     ev("xstilts", variant, lang, gained, task="demo-topic")]
            recs += [ev("baseline", variant, lang, [1.0] * (n // 2) + [0.0] * (n // 2), task="demo-retrieval", **MID),
                     ev("xstilts", variant, lang, [1.0] * (n // 4) + [0.0] * (3 * n // 4), task="demo-retrieval",
                        **MID),
                     ev("baseline", variant, lang, [1.0] * (n // 2) + [0.0] * (n // 2), task="demo-retrieval",
                        **LAST),
                     ev("xstilts", variant, lang, [1.0] * (3 * n // 4) + [0.0] * (n // 4), task="demo-retrieval",
                        **LAST)]
    recs += [bn("fp32", 10.0), bn("onnx-int8", 4.0)] + [bn(v, ms) for v, ms in peers]
    return recs


def test_two_protocols_are_two_tasks_never_averaged(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, _records(0.25))
    t = analysis.load([p])
    mid, last = "demo-retrieval@L6-mean", "demo-retrieval@L12-mean"
    assert t.tasks() == sorted(["demo-topic", mid, last])
    assert t.primary_tasks() == sorted(["demo-topic", mid])          # XTREME's protocol for averages
    assert t.protocols()[mid]["xtreme"] and not t.protocols()[last]["xtreme"]
    # each protocol's gain is its own: -25 points at the middle layer, +25 at the last, never 0
    assert analysis.gain_stats(t, mid, "fp32")["ref_gain"] == pytest.approx(-25)
    assert analysis.gain_stats(t, last, "fp32")["ref_gain"] == pytest.approx(25)
    keys = {k for k in t.evals if k.variant == "fp32" and k.role == "xstilts" and k.lang == "de"}
    assert {k.protocol for k in keys} == {"", "L6-mean", "L12-mean"}
    # the average over tasks: demo-topic's retention only (the middle-layer retrieval has no gain to keep);
    # the last layer's retention (1.0 here) is never mixed in
    rows = {r["variant"]: r for r in analysis.summary_rows(t)}
    topic = rows["onnx-int8"]["tasks"]["demo-topic"]["retention"]
    assert rows["onnx-int8"]["avg_retention"] == pytest.approx(topic)
    md = report.write(t, tmp_path / "rep").read_text()
    assert mid in md and last in md and "XTREME protocol" in md and "never averaged" in md


# ------------------------------------------------------------------ the closing paragraph

def _paragraph(tmp_path, topic_gain: float, **kw) -> str:
    p = tmp_path / f"r{topic_gain}.jsonl"
    records.append(p, _records(topic_gain, **kw))
    t = analysis.load([p])
    return report.closing_paragraph(t, analysis.summary_rows(t), pick.pick([p], Budget(max_drop=1.0)))


def test_closing_paragraph_with_a_clear_gain(tmp_path):
    text = _paragraph(tmp_path, 0.25)
    assert "\n" not in text
    assert "demo-topic +" in text and "a clear gain" in text
    assert "demo-retrieval (XTREME protocol: mean of layer 6 of 12) -25.0 points" in text and "a clear loss" in text
    assert "the model's own pooling" in text
    assert "onnx-int8 keeps" in text and "of the demo-topic gain" in text
    assert "2.50x the speed of fp32 and 1.25x ort-stock-int8's" in text
    assert "xopt recommends" in text and "because" not in text.split("xopt recommends")[0]


def test_closing_paragraph_compares_with_the_fastest_peer_of_the_run(tmp_path):
    """Peers are the registry's `peer` variants; the paragraph names the fastest one measured
    (here OpenVINO's int8, benched without eval records), never a variant that is no peer."""
    text = _paragraph(tmp_path, 0.25, peers=(("ort-stock-int8", 5.0), ("openvino-int8", 3.2), ("openvino-fp32", 8.0)))
    assert "2.50x the speed of fp32 and 0.80x openvino-int8's" in text
    assert "ort-stock-int8's" not in text and "onnx-int8's" not in text


def test_closing_paragraph_without_a_significant_gain(tmp_path):
    text = _paragraph(tmp_path, 0.0)
    assert "not significant" in text and "how much of it a variant keeps is n/a" in text
    assert "of the demo-topic gain" not in text and "keeping" not in text
    assert "compared on score instead" in text and "xopt recommends" in text
    empty = report.closing_paragraph(analysis.RecordIndex(), [], None)
    assert "No gain to report" in empty

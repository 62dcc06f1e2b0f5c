"""xopt.analysis on result files with known numbers: retention by hand, the paired bootstrap,
count outcomes, the typed record index and Pareto fronts (no model needed)."""

import math

import numpy as np
import pytest

from test_report_pick import OUT, _write, bn, ev
from xopt import analysis, records
from xopt.errors import XoptError


def test_retention_by_hand(tmp_path):
    t = analysis.load([_write(tmp_path)])
    st = analysis.gain_stats(t, "t", "int8", "fp32")
    # fp32 gain: de 75-25=50, ja 100-50=50 -> 50; int8 gain: de 50-25=25, ja 75-50=25 -> 25
    assert st["ref_gain"] == pytest.approx(50) and st["gain"] == pytest.approx(25)
    assert st["retention"] == pytest.approx(0.5)
    assert st["score"] == pytest.approx(62.5) and st["score_drop"] == pytest.approx(-25)
    lo, hi = st["retention_ci"]
    assert lo <= 0.5 <= hi and st["n_langs"] == 2 and st["n_examples"] == 8   # en is not zero-shot
    assert analysis.gain_stats(t, "t", "fp32", "fp32")["retention"] == pytest.approx(1)
    assert analysis.worst_language(t, "t", "int8", "fp32") in (("de", -25.0), ("ja", -25.0))
    # one language alone: de's int8 gain 25 of 50
    assert analysis.gain_stats(t, "t", "int8", "fp32", langs=["de"])["retention"] == pytest.approx(0.5)


def test_paired_interval_matches_the_normal_approximation(tmp_path):
    """Gain CI ~ point +- 1.96 * sd(paired difference) / sqrt(n); an unpaired bootstrap would be much wider here."""
    rng = np.random.default_rng(1)
    n = 400
    b = (rng.random(n) < 0.6).astype(float)
    x = b.copy()
    flip = rng.choice(n, 60, replace=False)
    x[flip[:45]] = 1.0      # X-STILTs fixes some examples ...
    x[flip[45:]] = 0.0      # ... and breaks a few
    recs = [ev("baseline", v, "de", b.tolist()) for v in ("fp32", "int8")]
    recs += [ev("xstilts", v, "de", x.tolist()) for v in ("fp32", "int8")]
    t = analysis.load([_write(tmp_path, recs, bench=False)])
    st = analysis.gain_stats(t, "t", "int8", "fp32", n_boot=4000)
    d = (x - b) * 100
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert st["gain"] == pytest.approx(d.mean())
    lo, hi = st["gain_ci"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    # identical variant and reference outcomes: retention exactly 1 in every replicate
    assert st["retention_ci"] == pytest.approx((1.0, 1.0))


def test_count_outcomes_are_micro_f1_of_summed_counts(tmp_path):
    base = [[1, 0, 0], [0, 0, 4], [1, 1, 0]]          # tp, fp, fn per sentence
    good = [[1, 0, 0], [3, 0, 1], [0, 0, 1]]
    o = analysis.Outcomes({"outcome_counts": good})
    assert o.score() == pytest.approx(100 * 2 * 4 / (2 * 4 + 0 + 2))      # 80, not the mean of sentence F1s (62)
    mean_of_f1 = np.mean([100 * 2 * tp / (2 * tp + fp + fn) for tp, fp, fn in good])
    assert abs(o.score() - mean_of_f1) > 10
    # sparse form: `counts`, only non-zero units kept, `n_units` in all: same score, zero rows resampled too
    sparse = analysis.Outcomes({"counts": good, "n_units": 5})
    assert sparse.n == 5 and sparse.score() == pytest.approx(o.score())
    recs = [ev("baseline", v, "sw", counts=base, task="panx") for v in ("fp32", "int8")]
    recs += [ev("xstilts", "fp32", "sw", counts=good, task="panx"),
             ev("xstilts", "int8", "sw", counts=[[2, 0, 2], [3, 0, 1], [1, 1, 0]], task="panx")]
    t = analysis.load([_write(tmp_path, recs, bench=False)])
    st = analysis.gain_stats(t, "panx", "int8", "fp32")
    f1 = lambda tp, fp, fn: 200 * tp / (2 * tp + fp + fn)  # noqa: E731
    assert st["ref_gain"] == pytest.approx(f1(4, 0, 2) - f1(2, 1, 4))
    assert st["retention"] == pytest.approx((f1(6, 1, 3) - f1(2, 1, 4)) / (f1(4, 0, 2) - f1(2, 1, 4)))
    assert st["has_ci"] and st["gain_ci"][0] <= st["gain"] <= st["gain_ci"][1]


def test_resample_weights_are_deterministic_per_seed_and_stream():
    w = analysis.resample_weights(7, 50, seed=3, stream="m/t/de")
    assert w.shape == (50, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert np.array_equal(w, analysis.resample_weights(7, 50, seed=3, stream="m/t/de"))
    assert not np.array_equal(w, analysis.resample_weights(7, 50, seed=4, stream="m/t/de"))
    assert not np.array_equal(w, analysis.resample_weights(7, 50, seed=3, stream="m/t/ja"))
    v = np.arange(7.0)
    assert np.allclose(analysis.replicate_means(v, w), [np.repeat(v, row.astype(int)).mean() for row in w])
    assert all(math.isnan(x) for x in analysis.percentile_ci(np.array([np.nan, np.inf])))   # no finite replicate
    lo, hi = analysis.percentile_ci(np.array([1.0, 2.0, np.nan, 3.0]))
    assert 1.0 <= lo < hi <= 3.0


def test_gain_stats_are_reproducible_with_a_seed(tmp_path):
    p = _write(tmp_path, [ev(m, v, lang, o * 5) for (m, v, lang), o in OUT.items()])
    a = analysis.gain_stats(analysis.load([p]), "t", "int8", seed=7)
    b = analysis.gain_stats(analysis.load([p]), "t", "int8", seed=7)
    c = analysis.gain_stats(analysis.load([p]), "t", "int8", seed=8)
    assert a["gain_ci"] == b["gain_ci"] and a["retention_ci"] == b["retention_ci"]
    assert a["gain"] == c["gain"]

    def reps(t, seed):
        return analysis.lang_replicates(t, t.family, "t", "de", seed=seed)[("xstilts", "int8")][1]

    t1, t2 = analysis.load([p]), analysis.load([p])
    assert np.array_equal(reps(t1, 7), reps(t2, 7)) and not np.array_equal(reps(t1, 7), reps(t1, 8))


def test_pareto_front():
    pts = [(4.0, 0.5), (10.0, 1.0), (5.0, 0.4), (4.0, 0.5), (12.0, 0.9), (3.0, 0.1)]
    front = analysis.pareto_front(pts)
    assert [pts[i] for i in front] == [(3.0, 0.1), (4.0, 0.5), (4.0, 0.5), (10.0, 1.0)]   # by x; ties both kept
    assert analysis.pareto_front([]) == [] and analysis.pareto_front([(1.0, 1.0)]) == [0]


def test_record_index_keys_and_join(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    recs += [bn("int8", 5.0), bn("int8", 9.0, model="baseline"), bn("int8", 4.5, batch=8),
             bn("fp32", 7.0, shape={"length_dist": "demo:de"})]
    t = analysis.load([_write(tmp_path, recs)])            # + fp32 10 ms, int8 4 ms (written last)
    assert analysis.EvalKey("(unnamed model)", "xstilts", "int8", "t", "de") in t.evals
    assert t.bn("(unnamed model)", "int8", 1, "s128")["p50_ms"] == 4.0     # later records win ...
    assert t.bench[analysis.BenchKey("(unnamed model)", "int8", 8, "s128")]["p50_ms"] == 4.5
    assert t.shapes() == [(1, "len:demo:de"), (1, "s128"), (8, "s128")]
    assert t.variants() == ["fp32", "int8"] and t.tasks() == ["t"] and t.langs("t") == ["de", "en", "ja"]
    again = analysis.load([_write(tmp_path, [bn("int8", 4.0), bn("int8", 9.0, model="baseline")], bench=False,
                                  name="b.jsonl")])
    assert again.bn("(unnamed model)", "int8", 1, "s128")["p50_ms"] == 4.0  # ... but never a baseline's
    assert analysis.shape_key({"seq_len": 64, "scenario": "offline"}) == "offline/s64"
    assert analysis.shape_key({"length_dist": {"source": "demo:ja"}}) == "len:demo:ja"


def test_retention_is_point():
    st = {"has_ci": True, "retention_uncertain": False, "retention": 0.8, "retention_ci": (0.6, 0.95)}
    assert analysis.retention_is_point(st)
    assert not analysis.retention_is_point({**st, "retention_ci": (-0.1, 0.9)})       # interval contains 0
    assert not analysis.retention_is_point({**st, "retention_uncertain": True})       # wider than 1, or no gain
    assert not analysis.retention_is_point({**st, "has_ci": False})                   # no per-example outcomes


def _on_split(rec, split=None, suite=None):
    return {**rec, **({"split": split} if split else {}), **({"suite": suite} if suite else {})}


def test_records_of_two_splits_or_suites_are_never_merged(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    # the same runs on the validation split: every X-STILTs answer right
    recs += [_on_split(ev(m, v, lang, [1] * 4 if m == "xstilts" else o), split="validation")
             for (m, v, lang), o in OUT.items()]
    p = _write(tmp_path, recs)
    with pytest.raises(XoptError,
                       match=r"task t has eval records of split test and split validation, which are never "
                             r"joined; pass --split test or --split validation"):
        analysis.load([p])
    t = analysis.load([p], split="test")
    assert analysis.gain_stats(t, "t", "int8", "fp32")["retention"] == pytest.approx(0.5)    # test split only
    assert any(n.startswith("--split test: records of split test only; left out: validation") for n in t.notes)
    assert analysis.EvalKey("(unnamed model)", "xstilts", "int8", "t", "de", "test", "demo") in t.evals
    v = analysis.load([p], split="validation")
    assert analysis.gain_stats(v, "t", "int8", "fp32")["score"] == pytest.approx(100)
    with pytest.raises(XoptError, match=r"--split dev: no records of that split; the records have: test, validation"):
        analysis.load([p], split="dev")
    mixed = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    mixed += [_on_split(ev("xstilts", "fp32", "de", [1, 1, 1, 1]), suite="xtreme")]
    p2 = _write(tmp_path, mixed, name="suites.jsonl")
    with pytest.raises(XoptError, match=r"suite demo and suite xtreme, .* pass --suite demo or --suite xtreme"):
        analysis.load([p2])
    assert analysis.load([p2], suite="demo").ev("(unnamed model)", "xstilts", "fp32", "t", "de")["value"] == 75.0


def _on_host(rec, cpu):
    return {**rec, "host": {**rec["host"], "cpu": cpu, "gpu": None}}


def test_bench_records_of_two_hosts_are_never_merged(tmp_path):
    recs = [ev(m, v, lang, o) for (m, v, lang), o in OUT.items()]
    recs += [_on_host(bn("fp32", 10.0), "CPU A"), _on_host(bn("int8", 4.0), "CPU A"),
             _on_host(bn("int8", 2.0), "CPU B")]          # the same shape, measured on another machine
    p = _write(tmp_path, recs, bench=False)
    a, b = (analysis.host_id({"host": {**recs[-1]["host"], "cpu": c}}) for c in ("CPU A", "CPU B"))
    assert a != b and len(a) == 8
    with pytest.raises(XoptError, match=rf"bench records of 2 hosts: CPU A \(\d+ threads\) \[{a}\] and CPU B "
                                        rf"\(\d+ threads\) \[{b}\]; .* pass --filter-host {a} or --filter-host {b}"):
        analysis.load([p])
    t = analysis.load([p], host=a)
    assert t.bn("(unnamed model)", "int8", 1, "s128")["p50_ms"] == 4.0        # not the later record of host B
    assert list(t.hosts) == [a] and any("--filter-host" in n and "left out: CPU B" in n for n in t.notes)
    assert analysis.BenchKey("(unnamed model)", "int8", 1, "s128", a) in t.bench
    t = analysis.load([p], host="cpu b")                                      # part of the name works too
    assert t.bn("(unnamed model)", "int8", 1, "s128")["p50_ms"] == 2.0 and t.bn("(unnamed model)", "fp32", 1,
                                                                                 "s128") is None
    with pytest.raises(XoptError, match=r"--filter-host zzz: no records of that host; the records have: CPU A"):
        analysis.load([p], host="zzz")
    # the same hardware under other library versions is one host: a re-run replaces the measurement
    again = _on_host(bn("int8", 3.0), "CPU A")
    again["host"] = {**again["host"], "libs": {"torch": "9.9"}, "platform": "other"}
    records.append(p, [again])
    assert analysis.load([p], host=a).bn("(unnamed model)", "int8", 1, "s128")["p50_ms"] == 3.0

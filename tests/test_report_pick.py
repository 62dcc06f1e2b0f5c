import math

import pytest

from xopt import pick, report, results

OUT = {  # (model, variant, lang) -> per-example outcomes
    ("baseline", "fp32", "de"): [1, 0, 0, 0], ("xstilts", "fp32", "de"): [1, 1, 1, 0],
    ("baseline", "int8", "de"): [1, 0, 0, 0], ("xstilts", "int8", "de"): [1, 1, 0, 0],
    ("baseline", "fp32", "ja"): [1, 1, 0, 0], ("xstilts", "fp32", "ja"): [1, 1, 1, 1],
    ("baseline", "int8", "ja"): [1, 1, 0, 0], ("xstilts", "int8", "ja"): [1, 1, 1, 0],
    ("baseline", "fp32", "en"): [1, 1, 1, 1], ("xstilts", "fp32", "en"): [1, 1, 1, 1],
}


def _write(tmp_path, bench=True):
    recs = [results.record("eval", model=m, variant=v, suite="demo", task="t", lang=lang, split="test",
                           metric="accuracy", value=100 * sum(o) / len(o), n_examples=len(o), outcomes=o)
            for (m, v, lang), o in OUT.items()]
    if bench:
        for v, p50 in (("fp32", 10.0), ("int8", 4.0)):
            recs.append(results.record("bench", model="xstilts", variant=v, batch=1, seq_len=128, p50_ms=p50,
                                       p90_ms=p50, p99_ms=p50 * 1.5, mean_ms=p50, throughput_seq_s=1000 / p50,
                                       throughput_tok_s=128000 / p50, peak_mem_mb=100.0, warmup=3, iters=10,
                                       scenario="fixed-batch"))
    p = tmp_path / "r.jsonl"
    results.append(p, recs)
    return p


def test_retention_by_hand(tmp_path):
    t = report.load([_write(tmp_path)])
    st = report.gain_stats(t, "t", "int8", "fp32", "baseline", "xstilts")
    # fp32 gain: de 75-25=50, ja 100-50=50 -> 50; int8 gain: de 50-25=25, ja 75-50=25 -> 25
    assert st["ref_gain"] == pytest.approx(50) and st["gain"] == pytest.approx(25)
    assert st["retention"] == pytest.approx(0.5)
    assert st["score"] == pytest.approx(62.5) and st["score_drop"] == pytest.approx(-25)
    lo, hi = st["retention_ci"]
    assert lo <= 0.5 <= hi and st["n_langs"] == 2          # en is not a zero-shot language
    assert report.gain_stats(t, "t", "fp32", "fp32", "baseline", "xstilts")["retention"] == pytest.approx(1)
    assert report.worst_language(t, "t", "int8", "fp32", "xstilts") in (("de", -25.0), ("ja", -25.0))


def test_report_files_and_not_measured(tmp_path):
    p = _write(tmp_path, bench=False)
    with open(p, "a") as f:
        f.write("not json\n")
    md = report.write_report([p], tmp_path / "rep")
    text = md.read_text()
    assert "not measured" in text and "r.jsonl:11" in text
    assert (tmp_path / "rep" / "retention_vs_latency.png").stat().st_size > 1000


def test_pick_cases(tmp_path):
    p = _write(tmp_path)
    c = pick.pick([p], max_drop=30)
    assert c["chosen"]["variant"] == "int8" and c["runner_up"]["variant"] == "fp32"
    c = pick.pick([p], min_retention=0.8)
    assert c["chosen"]["variant"] == "fp32"
    assert "retention 0.50 < 0.8" in "; ".join(c["runner_up"]["fails"])
    c = pick.pick([p], max_p50_ms=3)
    assert c["chosen"] is None and c["closest"]["variant"] == "int8"
    assert "no variant meets" in pick.render(c) and "p50 4.00 ms > 3" in pick.render(c)
    c = pick.pick([p], batch=8)
    assert c["chosen"] is None and "no bench record at batch 8" in pick.render(c)
    assert math.isclose(pick.pick([p])["chosen"]["p50_ms"], 4.0)

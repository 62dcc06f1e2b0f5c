"""`xopt report` writes summary.csv, and pandas reads it back: one row per variant x task x
language and per variant x bench shape."""

import math

import pytest
from typer.testing import CliRunner

from xopt import records
from xopt.cli import app
from xopt.report.flat import COLUMNS

OUTCOMES = {  # (role, variant, lang) -> per-example outcomes
    ("baseline", "fp32", "de"): [1, 0, 0, 0, 1, 0], ("xstilts", "fp32", "de"): [1, 1, 1, 0, 1, 1],
    ("baseline", "int8", "de"): [1, 0, 0, 0, 1, 0], ("xstilts", "int8", "de"): [1, 1, 0, 0, 1, 1],
    ("baseline", "fp32", "ja"): [1, 1, 0, 0, 0, 0], ("xstilts", "fp32", "ja"): [1, 1, 1, 1, 0, 1],
    ("baseline", "int8", "ja"): [1, 1, 0, 0, 0, 0], ("xstilts", "int8", "ja"): [1, 1, 1, 0, 0, 1],
    ("baseline", "fp32", "en"): [1, 1, 1, 1, 0, 1], ("xstilts", "fp32", "en"): [1, 1, 1, 1, 1, 1],
}


def _ev(role, variant, lang, outcomes):
    return records.record("eval", model=role, role=role, base_model="enc", variant=variant, suite="demo",
                          task="topic", lang=lang, split="test", metric="accuracy",
                          value=100 * sum(outcomes) / len(outcomes), n_examples=len(outcomes), outcomes=outcomes)


def _bn(variant, batch, p50, seq_len=128):
    return records.record("bench", model="xstilts", role="xstilts", base_model="enc", variant=variant, batch=batch,
                          seq_len=seq_len, p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.5, mean_ms=p50,
                          throughput_seq_s=1000 * batch / p50, throughput_tok_s=128000 * batch / p50,
                          peak_mem_mb=100.0, warmup=3, iters=10, scenario="fixed-batch", device="cpu")


@pytest.fixture
def report_dir(tmp_path):
    recs = [_ev(*k, o) for k, o in OUTCOMES.items()]
    recs += [_bn("fp32", 1, 10.0), _bn("fp32", 8, 40.0), _bn("int8", 1, 4.0), _bn("int8", 8, 20.0),
             _bn("int8", 8, 30.0, seq_len=256)]
    p = tmp_path / "r.jsonl"
    records.append(p, recs)
    r = CliRunner().invoke(app, ["report", str(p), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "summary.csv" in r.output
    return tmp_path / "rep"


def test_summary_csv_reads_back_in_pandas(report_dir):
    import pandas as pd

    df = pd.read_csv(report_dir / "summary.csv")
    assert tuple(df.columns) == COLUMNS
    ev, bn = df[df.kind == "eval"], df[df.kind == "bench"]
    # 2 variants x 1 task x 3 languages, int8 has no English records: 5 eval rows; 5 bench shapes
    assert len(ev) == 5 and len(bn) == 5 and len(df) == 10
    assert set(zip(ev.variant, ev.lang)) == {("fp32", "de"), ("fp32", "ja"), ("fp32", "en"), ("int8", "de"),
                                             ("int8", "ja")}
    de = ev[(ev.variant == "int8") & (ev.lang == "de")].iloc[0]
    assert de.task == "topic" and de.model == "enc" and de.n_examples == 6 and de.metric == "accuracy"
    assert math.isclose(de.score, 100 * 4 / 6) and math.isclose(de.baseline_score, 100 * 2 / 6)
    assert math.isclose(de.gain, 100 * 2 / 6) and math.isclose(de.reference_gain, 100 * 3 / 6)
    assert math.isclose(de.retention, 2 / 3)
    assert de.retention_lo <= de.retention <= de.retention_hi
    en = ev[(ev.variant == "fp32") & (ev.lang == "en")].iloc[0]
    assert math.isnan(en.retention) and math.isclose(en.gain, 100 / 6)   # English: scores, no retention
    assert ev.batch.isna().all() and bn.task.isna().all() and bn.score.isna().all()
    long = bn[(bn.variant == "int8") & (bn["shape"] == "s256")].iloc[0]
    assert long.batch == 8 and long.seq_len == 256 and long.p50_ms == 30.0 and long.device == "cpu"
    assert set(bn["shape"]) == {"s128", "s256"} and set(bn.scenario) == {"fixed-batch"}

"""The report's flat table, `summary.csv`: what pandas, a spreadsheet or a CI dashboard reads.

One row per model x variant x task x language (`kind` = eval: the suite and split, the
X-STILTs and baseline scores, the gain, and the retention against the reference with its
95% bootstrap interval) and one per model x variant x batch x bench shape (`kind` = bench:
latency percentiles, throughput, peak memory and its scope, LoadGen's validity, the host).
Every row has every column; a column that does not apply to the row's kind is empty.
Retention is per language here (the report's tables average it over the zero-shot
languages); English, the training language, has scores and a gain but no retention.

CSV only: pyarrow is not a dependency of xopt, and `pandas.read_csv("summary.csv")` then
`.to_parquet()` gives parquet wherever pyarrow is installed.
"""

from __future__ import annotations

import csv
import io
import math

from xopt.analysis import RecordIndex, gain_stats
from xopt.comparison import DEFAULT, Comparison

EVAL_COLUMNS = ("suite", "split", "metric", "n_examples", "score", "baseline_score", "gain", "reference_gain",
                "retention", "retention_lo", "retention_hi", "retention_uncertain")
BENCH_COLUMNS = ("device", "scenario", "batch", "shape", "seq_len", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                 "throughput_seq_s", "throughput_tok_s", "peak_mem_mb", "peak_mem_scope", "validity", "host")
COLUMNS = ("kind", "model", "variant", "task", "lang") + EVAL_COLUMNS + BENCH_COLUMNS


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def eval_rows(t: RecordIndex, comparison: Comparison = DEFAULT) -> list[dict]:
    rows = []
    for fam in t.families:
        for variant in t.variants(fam):
            for task in t.tasks(fam):
                for lang in t.langs(task, fam):
                    x, b = (t.ev(fam, role, variant, task, lang) for role in ("xstilts", "baseline"))
                    if not (x or b):
                        continue
                    any_rec = x or b
                    row = {"kind": "eval", "model": fam, "variant": variant, "task": task, "lang": lang,
                           "suite": any_rec.get("suite"), "split": any_rec.get("split"),
                           "metric": any_rec.get("metric"), "n_examples": any_rec.get("n_examples"),
                           "score": x["value"] if x else None, "baseline_score": b["value"] if b else None}
                    if x and b:
                        row["gain"] = x["value"] - b["value"]
                    st = (gain_stats(t, task, variant, comparison.reference, langs=[lang], family=fam)
                          if lang != "en" else None)
                    if st:
                        lo, hi = st["retention_ci"]
                        row.update(reference_gain=st["ref_gain"], retention=_num(st["retention"]),
                                   retention_lo=_num(lo), retention_hi=_num(hi),
                                   retention_uncertain=st["retention_uncertain"])
                    rows.append(row)
    return rows


def bench_rows(t: RecordIndex) -> list[dict]:
    rows = []
    for k, r in t.bench.items():
        rows.append({"kind": "bench", "model": k.family, "variant": k.variant, "batch": k.batch, "shape": k.shape,
                     "device": r.get("device"), "scenario": r.get("scenario") or "fixed-batch",
                     "host": t.hosts.get(k.host, k.host),
                     **{c: _num(r.get(c)) for c in BENCH_COLUMNS if c not in ("device", "scenario", "batch",
                                                                               "shape", "host")}})
    return rows


def summary_csv(t: RecordIndex, comparison: Comparison = DEFAULT) -> str:
    """summary.csv's text: eval rows, then bench rows, in the columns of COLUMNS."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in eval_rows(t, comparison) + bench_rows(t):
        w.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})
    return buf.getvalue()

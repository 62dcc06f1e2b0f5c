"""One row per (model, variant): per-task score, gain and retention, joined with the variant's cost."""

from __future__ import annotations

import numpy as np

from xopt.comparison import DEFAULT, Comparison
from xopt.analysis.index import RecordIndex
from xopt.analysis.retention import gain_stats, retention_is_point, worst_language


def default_shape(t: RecordIndex, family: str, batch: int = 1) -> str | None:
    """seq 128 when benchmarked at `batch`, else the first shape benchmarked there."""
    shapes = [s for b, s in t.shapes(family) if b == batch]
    return "s128" if "s128" in shapes else (shapes[0] if shapes else None)


def summary_rows(t: RecordIndex, comparison: Comparison = DEFAULT, batch=1, shape: str | None = None,
                 family: str | None = None) -> list[dict]:
    """One row per variant of `family`: per task score/gain/retention/worst language against
    `comparison.reference`, and cost (absent keys = not measured). `avg_retention_is_point`:
    every task averaged into `avg_retention` has a retention precise enough to plot
    (retention_is_point); `avg_retention_span`: the lowest and highest end of those tasks' 95%
    intervals."""
    reference = comparison.reference
    family = family or t.family
    shape = shape or default_shape(t, family, batch)
    rows = []
    ref_bench = t.bn(family, reference, batch, shape)
    for v in t.variants(family):
        row = {"family": family, "variant": v, "tasks": {}, "batch": batch, "shape": shape}
        for task in t.tasks(family):
            st = gain_stats(t, task, v, reference, family=family)
            if st:
                st["worst"] = worst_language(t, task, v, reference, family) if v != reference else None
                row["tasks"][task] = st
        b = t.bn(family, v, batch, shape)
        if b:
            row["p50_ms"], row["p99_ms"] = b["p50_ms"], b["p99_ms"]
            row["throughput_seq_s"] = b["throughput_seq_s"]
            row["peak_mem_mb"] = b.get("peak_mem_mb")
            row["speedup"] = ref_bench["p50_ms"] / b["p50_ms"] if ref_bench else None
            row["round_p50_ms"] = b.get("round_p50_ms")
        # averages over tasks take one retrieval protocol per task (t.primary_tasks): two
        # protocols of one task are never averaged together
        primary = [row["tasks"][task] for task in t.primary_tasks(family) if task in row["tasks"]]
        kept = [st for st in primary if st["ref_gain"] > 0 and np.isfinite(st["retention"])]
        row["avg_retention"] = float(np.mean([st["retention"] for st in kept])) if kept else None
        row["avg_retention_is_point"] = bool(kept) and all(retention_is_point(st) for st in kept)
        # the tasks' 95% intervals, enveloped (exact for one task, conservative for several)
        row["avg_retention_span"] = ((min(st["retention_ci"][0] for st in kept), max(st["retention_ci"][1] for st in kept))
                                     if kept and all(np.isfinite(st["retention_ci"]).all() for st in kept) else None)
        row["batch_invariance"] = t.batch_invariance(family, v)
        scores = [st["score"] for st in primary]
        row["avg_score"] = float(np.mean(scores)) if scores else None
        rows.append(row)
    return rows


def invariance_text(bi: dict) -> str:
    """What a `batch_invariance` record field (xopt.invariance) says, in one line: what differs
    between batch 1 and the eval batch, over how many texts, and the variant's activation scales."""
    parts = [f"max |Δ {bi.get('max_abs_diff_of') or 'output'}| {bi['max_abs_diff']:.2g} between batch 1 and "
             f"batch {bi['batch']}"]
    if bi.get("argmax_agreement") is not None:
        parts.append(f"argmax agreement {bi['argmax_agreement']:.1%}")
    if bi.get("min_cosine") is not None:
        parts.append(f"min cosine {bi['min_cosine']:.5f}")
    scales = bi.get("activation_scales")
    return ", ".join(parts) + f" over {bi['texts']} texts" + (f" ({scales} activation scales)" if scales else "")


def invariance_cell(bi: dict | None) -> str:
    """The variant table's cell: yes/no with the largest difference (n/a: not measured)."""
    if not bi:
        return "n/a"
    agree = bi.get("argmax_agreement")
    extra = f", argmax {agree:.1%}" if agree is not None and agree < 1 else ""
    return f"{'yes' if bi['invariant'] else 'no'} (Δ {bi['max_abs_diff']:.1g}{extra})"

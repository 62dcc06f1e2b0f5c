"""Tables for the terminal: `xopt eval` and `xopt bench` output, and the demo's closing table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xopt.analysis import load_warnings, shape_key, task_label
from xopt.comparison import DEFAULT
from xopt.errors import XoptError
from xopt.report.render import to_rich
from xopt.report.table import Column, Table


def cost_cell(r: dict | None, key: str, fmt: str = "{:.2f}") -> str:
    """A cost figure, or "not measured" (never zero) when the record lacks it."""
    return fmt.format(r[key]) if r and r.get(key) is not None else "not measured"


def eval_table(recs: list[dict]) -> Table:
    """Eval records; a retrieval task is named with its protocol (task@L6-mean: mean over layer 6)."""
    t = Table(["model", "variant", "task", "lang", "metric", "value", "n"])
    for r in recs:
        t.add_row(r["model"], r["variant"], task_label(r), r["lang"], r["metric"], f"{r['value']:.2f}",
                  str(r["n_examples"]))
    return t


def bench_table(recs: list[dict], compare: str | None = None) -> Table:
    ref = {}
    if compare:
        ref = {(r["model"], r["batch"], shape_key(r)): r for r in recs if r["variant"] == compare}
        if not ref:
            raise XoptError(f"--compare {compare}: no such variant among the benchmarked ones")
    t = Table(["model", "variant", "batch", "shape", "p50 ms", "p99 ms", "round p50s", "seq/s", "tok/s",
               "peak MB", *(["p50 vs " + compare] if compare else [])])
    for r in recs:
        name = Path(r["variant_dir"]).name if r.get("variant_dir") else r["variant"]
        variant = r["variant"] + ("" if name == r["variant"] else f" ({name})")
        invalid = f" {r['validity']}" if r.get("validity") not in (None, "VALID") else ""
        shared = " *" if r.get("peak_mem_scope") == "shared process" else ""
        cells = [r["model"], variant, str(r["batch"]), shape_key(r) + invalid, f"{r['p50_ms']:.2f}",
                 f"{r['p99_ms']:.2f}", " ".join(f"{x:.1f}" for x in r.get("round_p50_ms", [])),
                 f"{r['throughput_seq_s']:.1f}", f"{r['throughput_tok_s']:.0f}",
                 (f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else "n/a") + shared]
        if compare:
            rr = ref.get((r["model"], r["batch"], shape_key(r)))
            cells.append(f"{rr['p50_ms'] / r['p50_ms']:.2f}x" if rr else "n/a")
        t.add_row(*cells)
    if any(r.get("peak_mem_scope") == "shared process" for r in recs):
        t.notes.append("peak MB *: one process held every variant of the run; bench one variant per run for "
                       "its own peak.")
    if any(r.get("validity") not in (None, "VALID") for r in recs):
        t.notes.append("INVALID: LoadGen marked the run invalid; the record's invalid_reason says why.")
    return t


def print_eval(recs: list[dict]) -> None:
    from xopt.progress import out_console

    out_console().print(to_rich(eval_table(recs)))


def print_bench(recs: list[dict], compare: str | None = None) -> None:
    from xopt.progress import out_console

    out_console().print(to_rich(bench_table(recs, compare)))
    for line in load_warnings(recs):
        out_console().print(f"warning: {line}", highlight=False, soft_wrap=True)


def summary_model(rows: list[dict], tasks: list[str], reference: str = DEFAULT.reference) -> Table:
    """The demo's closing table, two columns per task (score over its worst language's change;
    retention or the reference gain), narrow enough for a 160-column log with three tasks."""
    cols = [Column("variant")]
    for task in tasks:
        short = task.removeprefix("demo-")
        cols += [Column(f"{short}\nscore\n(worst)", "right"), Column(f"{short}\nretention\n(95% CI)", "right")]
    shape = next((r["shape"] for r in rows if r.get("shape")), None)
    cols += [Column(f"p50 ms\nb{rows[0]['batch'] if rows else 1} {shape or ''}", "right"),
             Column(f"vs\n{reference}", "right")]
    t = Table(cols, title="X-STILTs gain kept by each variant (zero-shot languages)")
    for r in rows:
        cells = [r["variant"]]
        for task in tasks:
            st = r["tasks"].get(task)
            if not st:
                cells += ["n/a"] * 2
                continue
            lo, hi = st["retention_ci"]
            if st["retention_uncertain"] or not np.isfinite(st["retention"]):
                g_lo, g_hi = st["ref_gain_ci"]
                ret = f"n/a: {reference}\ngain {st['ref_gain']:+.1f}\n({g_lo:+.1f}..{g_hi:+.1f})"
            else:
                ret = f"{st['retention']:.2f}\n({lo:.2f}..{hi:.2f})"
            w = st.get("worst")
            worst = f"{w[0]} {w[1]:+.1f}" if w else "ref" if r["variant"] == reference else "no drop"
            cells += [f"{st['score']:.1f}\n({worst})", ret]
        cells += [cost_cell(r, "p50_ms", "{:.1f}"), f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"]
        t.add_row(*cells)
    return t


def summary_table(rows: list[dict], tasks: list[str], reference: str = DEFAULT.reference):
    """The demo's closing table as a rich table."""
    return to_rich(summary_model(rows, tasks, reference))

"""The report's sections for one model family: summary, per-task, paper reference, cost,
model sizes, cost per language. Each adds headings, paragraphs and tables to a Doc."""

from __future__ import annotations

import numpy as np

from xopt.analysis import (LANGS, PAPER, RecordIndex, fmt_ci, fmt_retention, gain_stats, invariance_cell,
                           invariance_text, lang_groups, load_warnings, paper_task, per_language_cost, shape_label, summary_rows,
                           worst_language)
from xopt.comparison import Comparison
from xopt.report.closing import protocol_notes, task_order
from xopt.report.table import Doc, Mark, Table
from xopt.report.terminal import cost_cell


def summary_section(doc: Doc, t: RecordIndex, fam: str, comparison: Comparison) -> list[dict]:
    """Per variant: per task score, gain, retention and worst language; p50 and speed-up."""
    reference = comparison.reference
    tasks = task_order(t, fam)
    rows = summary_rows(t, comparison, family=fam)
    shape = rows[0]["shape"] if rows else None
    header = ["variant"]
    for task in tasks:
        header += [f"{task} score", f"{task} gain", f"{task} retention", f"{task} worst lang"]
    header += [f"p50 ms (b1 {shape_label(shape) if shape else ''})", f"speed-up vs {reference}",
               "batch invariant (b1 vs eval batch)"]
    table = Table(header)
    for r in rows:
        cells = [r["variant"]]
        for task in tasks:
            st = r["tasks"].get(task)
            if not st:
                cells += ["n/a"] * 4
                continue
            w = st.get("worst")
            cells += [f"{st['score']:.2f}", fmt_ci(st["gain"], st["gain_ci"]), fmt_retention(st, reference),
                      f"{w[0]} ({w[1]:+.1f})" if w else "reference" if r["variant"] == reference else "no drop"]
        cells += [cost_cell(r, "p50_ms"), f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a",
                  invariance_cell(r.get("batch_invariance"))]
        table.add_row(*cells)
    doc.table(table)
    varying = [f"{r['variant']}: {invariance_text(r['batch_invariance'])}" for r in rows
               if r.get("batch_invariance") and not r["batch_invariance"]["invariant"]]
    if varying:
        doc.p("Not batch invariant: a text's outputs alone (batch 1) differ from its outputs among the eval "
              "batch's neighbours beyond the tolerance, so a server that batches requests answers differently "
              "from one that does not, and the scores above are those of the eval batch:")
        doc.ul(varying)
    notes = protocol_notes(t, fam)
    if notes:
        doc.p("Retrieval tasks are named with the embedding they score (task@layer-pooling); two protocols of one "
              "task are separate columns, never averaged together (averages over tasks take XTREME's):")
        doc.ul(notes)
    return rows


def task_section(doc: Doc, t: RecordIndex, fam: str, task: str, comparison: Comparison) -> None:
    """Per language, then per language group: the reference's gain and each variant's gain and retention."""
    reference = comparison.reference
    langs = t.langs(task, fam)
    variants = [v for v in t.variants(fam) if v != reference]
    worst = {v: (w[0] if (w := worst_language(t, task, v, reference, fam)) else None) for v in variants}
    doc.h(3, f"{task}: per language")
    doc.p(f"Scores of {reference}: baseline, X-STILTs and the gain (95% CI); for each variant its gain and "
          f"retention (= gain / {reference} gain). The language whose X-STILTs score drops most from "
          f"{reference} is highlighted per variant. Resource class: Joshi et al. 2020.")
    no_distractors = sorted({k.lang for k, r in t.evals.items()
                             if k.family == fam and k.task == task and r.get("distractors") is False})
    if no_distractors:
        doc.p(f"Note: {task} {' '.join(no_distractors)} mined among the gold pairs only (a source without "
              "distractors, such as the hub's bucc18): F1 is higher than on BUCC's own files, not comparable "
              "with published BUCC figures.")
    header = ["lang", "class", "script", "n", f"baseline ({reference})", f"X-STILTs ({reference})",
              f"gain ({reference})"]
    for v in variants:
        header += [f"{v} gain", f"{v} retention"]
    table = Table(header)
    for lang in langs:
        cls, script = LANGS.get(lang, ("?", "?"))
        ref = gain_stats(t, task, reference, reference, langs=[lang], family=fam) if lang != "en" else None
        x, b = t.ev(fam, "xstilts", reference, task, lang), t.ev(fam, "baseline", reference, task, lang)
        cells = [lang, str(cls), script, str((x or b or {}).get("n_examples", "")),
                 f"{b['value']:.1f}" if b else "n/a", f"{x['value']:.1f}" if x else "n/a",
                 fmt_ci(ref["gain"], ref["gain_ci"], 1) if ref else
                 (f"{x['value'] - b['value']:+.1f} (source language)" if x and b else "n/a")]
        for v in variants:
            st = gain_stats(t, task, v, reference, langs=[lang], family=fam) if lang != "en" else None
            if not st:
                cells += ["n/a", "n/a"]
                continue
            g, ret = fmt_ci(st["gain"], st["gain_ci"], 1), fmt_retention(st, reference, short=True)
            cells += [Mark(g) if worst[v] == lang else g, ret]
        table.add_row(*cells)
    doc.table(table)
    groups = lang_groups([la for la in langs if la != "en"])
    if groups:
        doc.p("Language groups (zero-shot languages; averages of per-language scores, intervals from the "
              "same bootstrap).")
        table = Table(["group", "languages", f"gain ({reference})"] + [f"{v} retention" for v in variants])
        for name, members in groups:
            ref = gain_stats(t, task, reference, reference, langs=members, family=fam)
            cells = [name, " ".join(members), fmt_ci(ref["gain"], ref["gain_ci"], 1) if ref else "n/a"]
            for v in variants:
                st = gain_stats(t, task, v, reference, langs=members, family=fam)
                cells.append(fmt_retention(st, reference, short=True) if st else "n/a")
            table.add_row(*cells)
        doc.table(table)


def reference_section(doc: Doc, t: RecordIndex, fam: str, comparison: Comparison) -> None:
    """The X-STILTs paper's figures beside our fp32 reproduction (XLM-R large only)."""
    reference = comparison.reference
    table = Table(["task", "metric", "paper baseline", "paper X-STILTs", "paper gain", f"our baseline ({reference})",
                   f"our X-STILTs ({reference})", "our gain", "languages"])
    for task in t.tasks(fam):
        key = paper_task(task)
        if not key:
            continue
        metric, pb, px = PAPER[key]
        langs = t.langs(task, fam)
        ours = [(x["value"], b["value"]) for la in langs
                if (x := t.ev(fam, "xstilts", reference, task, la))
                and (b := t.ev(fam, "baseline", reference, task, la))]
        ob, ox = (np.mean([b for _, b in ours]), np.mean([x for x, _ in ours])) if ours else (None, None)
        table.add_row(task, metric, f"{pb:.1f}", f"{px:.1f}", f"{px - pb:+.1f}",
                      f"{ob:.1f}" if ours else "n/a", f"{ox:.1f}" if ours else "n/a",
                      f"{ox - ob:+.1f}" if ours else "n/a", str(len(ours)))
    if table.rows:
        doc.h(3, "X-STILTs paper reference (XLM-R large, test)")
        doc.p("Phang et al. 2020, averages over each task's languages; ours: averages of the record values over "
              "every language evaluated (en included). Check that our fp32 reproduction is close before trusting "
              "retention figures.")
        doc.table(table)


def cost_section(doc: Doc, t: RecordIndex, fam: str) -> None:
    """Every bench record of the family; variants evaluated but not benchmarked say so."""
    doc.h(3, "Cost")
    doc.p("Interleaved rounds; `rounds` lists each round's p50 (drift of a shared machine). "
          "Variants with evaluation records but no benchmark are listed as not measured. "
          "Low-precision ops are counted from the built artefact (- for a float variant).")
    if t.hosts:
        doc.p(f"Host: {', '.join(t.hosts.values())}.")
    mine = [r for k, r in t.bench.items() if k.family == fam]
    if any(r.get("peak_mem_scope") == "shared process" for r in mine):
        doc.p("peak MB marked * was measured in one process holding every variant of its run, not per variant.")
    loaded = load_warnings(mine)
    if loaded:
        doc.p("Measured on a loaded machine (the 1-minute load average above the threads measured with):")
        doc.ul(loaded)
    if any(r.get("validity") not in (None, "VALID") for r in mine):
        doc.p("Shapes marked INVALID are LoadGen runs that LoadGen marked INVALID (see invalid_reason in the record).")
    table = Table(["variant", "batch", "shape", "device", "p50 ms", "p99 ms", "rounds", "seq/s", "tok/s", "peak MB",
                   "artefact MB", "low-precision ops"])
    for k, r in sorted(t.bench.items(), key=lambda kv: (kv[0].batch, kv[0].shape, kv[0].variant)):
        if k.family != fam:
            continue
        invalid = " INVALID" if r.get("validity") not in (None, "VALID") else ""
        shared = " *" if r.get("peak_mem_scope") == "shared process" else ""
        table.add_row(k.variant, str(k.batch), shape_label(k.shape) + invalid, r.get("device", "?"),
                      f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", " ".join(f"{x:.1f}" for x in r.get("round_p50_ms", [])),
                      f"{r['throughput_seq_s']:.1f}", f"{r['throughput_tok_s']:.0f}",
                      cost_cell(r, "peak_mem_mb", "{:.0f}") + shared, cost_cell(r, "artefact_mb", "{:.0f}"),
                      str(r["quantized_ops"]) if r.get("quantized_ops") is not None else "-")
    measured = {k.variant for k in t.bench if k.family == fam}
    for v in t.variants(fam):
        if v not in measured:
            table.add_row(v, *["not measured"] * (len(table.columns) - 1))
    doc.table(table)


def size_section(doc: Doc, t: RecordIndex, all_rows: dict, comparison: Comparison, images: list) -> None:
    """Average retention per variant for models of different sizes."""
    reference = comparison.reference
    fams = [f for f in t.families if f in t.sizes]
    if not fams:
        return
    doc.h(2, "Models of different sizes")
    doc.p("Average retention over tasks with a positive fp32 gain; score = average X-STILTs score over tasks.")
    variants = sorted({r["variant"] for f in fams for r in all_rows[f]})
    table = Table(["model", "parameters", "non-embedding parameters"] + [f"{v} retention" for v in variants])
    for f in sorted(fams, key=lambda f: t.sizes[f]["params"]):
        sz = t.sizes[f]
        by_v = {r["variant"]: r for r in all_rows[f]}
        table.add_row(f, f"{sz['params'] / 1e6:.1f}M",
                      f"{sz['non_embedding_params'] / 1e6:.1f}M" if sz.get("non_embedding_params") else "n/a",
                      *[f"{by_v[v]['avg_retention']:.2f}" if v in by_v and by_v[v]["avg_retention"] is not None
                        else "n/a" for v in variants])
    doc.table(table)
    if "retention_vs_size.png" in images:
        doc.img("retention_vs_size.png", "retention vs model size per variant")


def tokens_section(doc: Doc, t: RecordIndex, images: list) -> None:
    """Tokens per sentence and latency per language."""
    rows = per_language_cost(t)
    if not rows:
        return
    doc.h(2, "Cost per language")
    doc.p("Tokens per sentence differ by language (tokenizer); `measured p50` comes from benchmarks on each "
          "language's length mix, `implied p50` interpolates fixed-length benchmarks at the mean token count.")
    doc.table(Table(["model", "variant", "batch", "lang", "mean tokens", "measured p50 ms", "implied p50 ms"],
                    [[r["family"], r["variant"], str(r["batch"]), r["lang"], f"{r['mean_tokens']:.1f}",
                      cost_cell(r, "measured_ms"), cost_cell(r, "implied_ms")] for r in rows]))
    if "tokens_per_language.png" in images:
        doc.img("tokens_per_language.png", "tokens per sentence and latency per language")

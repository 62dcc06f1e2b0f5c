"""The report's calibration section: calibration methods, en-only vs multilingual calibration,
and per-layer sensitivity. Reads raw records (xopt.records.read), so several calibrations of
one variant stay apart (the record index keys them together)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from xopt.analysis import percentile_ci, replicate_means, resample_weights, task_label
from xopt.comparison import DEFAULT
from xopt.report.table import Doc, Table


def calibration_label(c: dict) -> str:
    """method / calibration languages / samples[, N kept]."""
    langs = c.get("langs") or []
    where = "en" if langs == ["en"] else (",".join(langs) if len(langs) <= 4 else f"{len(langs)} langs")
    kept = f", {len(c['keep'])} kept" if c.get("keep") else ""
    return f"{c.get('method')} / {where} / {c.get('samples')}{kept}"


def _methods_table(groups: dict, ref: dict) -> Table:
    table = Table(["model", "variant", "calibration", "task", "langs", "avg change", "worst lang (change)"])
    for (model, variant, lab), by in groups.items():
        for task in sorted({t for t, _ in by}):
            drops = [(by[(task, lang)]["value"] - ref[(model, task, lang)]["value"], lang)
                     for t, lang in by if t == task and lang != "en" and (model, task, lang) in ref]
            if drops:
                worst = min(drops)
                table.add_row(model, variant, lab, task, str(len(drops)), f"{np.mean([d for d, _ in drops]):+.2f}",
                              f"{worst[1]} ({worst[0]:+.1f})")
    return table


def _en_vs_multilingual_pairs(groups: dict) -> list[tuple]:
    """(model, variant, en-only label, its records, multilingual label, its records) for every
    en-only calibration that has a multilingual one with the same method and sample count."""
    pairs = []
    for (model, variant, lab), by in groups.items():
        first = next(iter(by.values()))["calibration"]
        if (first.get("langs") or []) != ["en"]:
            continue
        for (m2, v2, lab2), by2 in groups.items():
            c2 = next(iter(by2.values()))["calibration"]
            if (m2, v2) == (model, variant) and len(c2.get("langs") or []) > 1 and \
                    (c2.get("method"), c2.get("samples")) == (first.get("method"), first.get("samples")):
                pairs.append((model, variant, lab, by, lab2, by2))
    return pairs


def _pair_table(model: str, task: str, by: dict, by2: dict, ref: dict, reference: str, n_boot: int,
                seed: int) -> tuple[Table, list]:
    """Per language: reference, en-only and multilingual scores and the difference, with a 95%
    paired-bootstrap interval over the examples (the one bootstrap, xopt.analysis)."""
    table = Table(["lang", reference, "en-only", "multilingual", "multi - en [95% CI]"])
    diffs = []
    for _, lang in sorted(k for k in by if k[0] == task):
        a, b = by.get((task, lang)), by2.get((task, lang))
        if not (a and b) or a.get("example_ids") != b.get("example_ids"):
            continue
        oa, ob = np.asarray(a.get("outcomes", []), float), np.asarray(b.get("outcomes", []), float)
        d = b["value"] - a["value"]
        lo = hi = math.nan
        if len(oa) and len(oa) == len(ob):
            w = resample_weights(len(oa), n_boot, seed, f"{model}/{task}/{lang}")
            lo, hi = percentile_ci(replicate_means(ob - oa, w) * 100)
        r = ref.get((model, task, lang))
        diffs.append((d, lang))
        table.add_row(lang, f"{r['value']:.1f}" if r else "n/a", f"{a['value']:.1f}", f"{b['value']:.1f}",
                      f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + (" *" if lo > 0 or hi < 0 else ""))
    return table, diffs


def calibration_section(doc: Doc, recs: list[dict], reference: str = DEFAULT.reference, out: Path | None = None,
                        n_boot: int = 1000, seed: int = 0) -> None:
    """The report's calibration section (nothing when the records hold none).

    1. methods: per (model, variant, calibration) and task, the average and the worst-language
       score drop vs `reference` over the zero-shot languages;
    2. en-only vs multilingual calibration (same variant and method, calibration languages
       ["en"] vs several): per language both scores and the difference with a 95% paired
       bootstrap interval over the examples;
    3. sensitivity records: the ranking (and, with `out`, a bar plot per run)."""
    evals = [r for r in recs if r.get("kind") == "eval" and r.get("lang") != "avg"]
    cal = [r for r in evals if r.get("calibration")]
    sens = [r for r in recs if r.get("kind") == "sensitivity"]
    if not cal and not sens:
        return
    ref = {(r["model"], task_label(r), r["lang"]): r for r in evals if r["variant"] == reference}
    groups: dict[tuple, dict] = {}
    for r in cal:
        groups.setdefault((r["model"], r["variant"], calibration_label(r["calibration"])), {})[
            (task_label(r), r["lang"])] = r
    doc.h(2, "Calibration")
    methods = _methods_table(groups, ref)
    if methods.rows:
        doc.p(f"Score change vs {reference} (points), zero-shot languages.")
        doc.table(methods)
    for model, variant, lab, by, lab2, by2 in _en_vs_multilingual_pairs(groups):
        for task in sorted({t for t, _ in by}):
            table, diffs = _pair_table(model, task, by, by2, ref, reference, n_boot, seed)
            if table.rows:
                top = ", ".join(f"{lang} {d:+.1f}" for d, lang in sorted(diffs, reverse=True)[:3])
                table.notes.append(f"Mean difference {np.mean([d for d, _ in diffs]):+.2f} points over "
                                   f"{len(diffs)} languages; largest gains: {top}. `*`: interval excludes 0.")
                doc.h(3, f"{model} {variant}, {task}: en-only ({lab}) vs multilingual ({lab2}) calibration")
                doc.table(table)
    if sens:
        _sensitivity(doc, sens, out)


def _sensitivity(doc: Doc, sens: list[dict], out: Path | None) -> None:
    from xopt.report.plots import plot_sensitivity

    doc.h(3, "Per-layer sensitivity (quantised alone; drop of 100 x cosine to full precision, held-out "
             "multilingual sample)")
    by_run: dict[tuple, list] = {}
    for r in sens:
        by_run.setdefault((r["model"], r["variant"], calibration_label(r["calibration"])), []).append(r)
    for (model, variant, lab), rs in by_run.items():
        rs = sorted(rs, key=lambda r: r["rank"])
        doc.p(f"{model} {variant}, {lab}:")
        doc.table(Table(["rank", "unit", "drop", "kept"], [[str(r["rank"]), r["unit"], f"{r['drop']:.3g}",
                                                            "yes" if r.get("kept") else ""] for r in rs[:20]]))
        if out is not None:
            name = plot_sensitivity(rs, model, variant, Path(out))
            doc.img(name, f"sensitivity of {model} {variant}")

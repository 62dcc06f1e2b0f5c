"""The report: one document (sections, tables, figures) written as report.md, a self-contained
report.html and the PNGs, with the flat table summary.csv beside them, atomically."""

from __future__ import annotations

from pathlib import Path

from xopt.analysis import RecordIndex, is_xlmr_large, load, summary_rows
from xopt.comparison import DEFAULT, Comparison
from xopt.report.calibration import calibration_section
from xopt.report.closing import task_order
from xopt.report.plots import all_plots, heatmap_name
from xopt.report.sections import (cost_section, reference_section, size_section, summary_section, task_section,
                                  tokens_section)
from xopt.report.render import to_html, to_markdown
from xopt.report.table import Doc


def build(t: RecordIndex, out: Path, comparison: Comparison = DEFAULT, closing: str | None = None) -> Doc:
    """The report's document; PNGs are written into `out`. `closing`: a paragraph in plain words
    (xopt.report.closing) shown first, under "In short"."""
    reference = comparison.reference
    all_rows = {fam: summary_rows(t, comparison, family=fam) for fam in t.families}
    images = all_plots(t, all_rows, out, comparison)
    doc = Doc()
    doc.h(1, "xopt report")
    doc.p(f"Gain = score(X-STILTs) - score(baseline) on the same variant; retention = gain / gain on {reference}. "
          f"Averages over zero-shot languages (all but en); 95% paired bootstrap intervals over examples. "
          f"Retention is flagged when the {reference} gain's interval contains zero or the retention interval is "
          f"wider than 1.")
    doc.ul(t.notes)
    if closing:
        doc.h(2, "In short")
        doc.p(closing)
    for fam in t.families:
        doc.h(2, f"Model: {fam}" + (f" ({t.sizes[fam]['params'] / 1e6:.1f}M parameters)" if fam in t.sizes else ""))
        if is_xlmr_large(fam):
            reference_section(doc, t, fam, comparison)
        if t.tasks(fam):
            summary_section(doc, t, fam, comparison)
        for task in task_order(t, fam):
            task_section(doc, t, fam, task, comparison)
        cost_section(doc, t, fam)
        for task in task_order(t, fam):
            name = heatmap_name(t, fam, task)
            if name in images:
                doc.img(name, f"{name[8:-4]}: score change vs {reference} per variant and language")
    pareto = [n for n in images if n.startswith("pareto_")]
    if pareto:
        doc.h(2, "Pareto fronts" + (" across all model x variant pairs" if len(t.families) > 1 else ""))
        doc.p("Each point is one variant (of one model) at one batch size; the dashed line joins the points no "
              "other point beats on both axes. A variant whose retention interval contains 0 or is wider than 1 "
              "is not drawn as a point in the retention panels (its name and the reason are listed there); its "
              "score is in the score panels. An axis whose values span more than 5x is logarithmic.")
        for name in pareto:
            doc.img(name, f"retention and score vs latency and throughput, batch {name[8:-4]}")
    size_section(doc, t, all_rows, comparison, images)
    tokens_section(doc, t, images)
    calibration_section(doc, t.records, reference, out)
    if t.skipped:
        doc.h(2, "Skipped records")
        doc.ul([f"{s.where}: {s.why}" for s in t.skipped])
    return doc


def write(t: RecordIndex, out: Path, comparison: Comparison = DEFAULT, force: bool = False, records=None,
          closing: str | None = None) -> Path:
    """report.md, report.html (images embedded), the PNGs and summary.csv (the flat table, see
    xopt.report.flat) in `out`, written atomically with a manifest of kind "report", so that
    --force replaces a report and nothing else."""
    from xopt import manifest as mf
    from xopt.report.flat import summary_csv

    with mf.atomic_dir(Path(out), force=force, kind="report") as tmp:
        doc = build(t, tmp, comparison, closing)
        (tmp / "report.md").write_text(to_markdown(doc), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(doc, tmp), encoding="utf-8")
        (tmp / "summary.csv").write_text(summary_csv(t, comparison), encoding="utf-8")
        mf.write(tmp, kind="report", source={"reference": comparison.reference,
                                              "records": [str(p) for p in records] if records else None})
    return Path(out) / "report.md"


def write_report(paths, out: Path, comparison: Comparison = DEFAULT, force: bool = False, model: str | None = None,
                 split: str | None = None, suite: str | None = None, host: str | None = None) -> Path:
    """`xopt report`: load the records of `paths` and write the report into `out`."""
    return write(load(paths, comparison, model, split=split, suite=suite, host=host), out, comparison, force,
                 records=list(paths))

"""The report's figures, one function each; every function writes PNGs into `out` and returns
their file names (none when it has nothing to draw)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np

from xopt.analysis import (RecordIndex, default_shape, pareto_front, per_language_cost, retention_is_point,
                           retention_na, shape_label)
from xopt.comparison import DEFAULT, Comparison


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _labeller(t: RecordIndex):
    """Point labels: the variant, prefixed by the model when the records hold several."""
    return (lambda f, v: f"{f}/{v}") if len(t.families) > 1 else (lambda f, v: v)


def heatmap_name(t: RecordIndex, fam: str, task: str) -> str:
    stem = f"{fam}_{task}" if len(t.families) > 1 else task
    return "heatmap_" + re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + ".png"


PARETO_X = (("p50_ms", "p50 latency (ms)", True), ("p99_ms", "p99 latency (ms)", True),
            ("throughput_seq_s", "sequences/s", False))


LOG_SPREAD = 5.0     # an axis whose plotted values span more than this factor is drawn in log scale
LABEL = "point-label"   # the gid of a point's name, which _place_labels moves off other names and points
# where a name may go, in points from its point (x, y offset, horizontal alignment), nearest first
SPOTS = [(dx * s, dy, "left" if s > 0 else "right") for dy in (4, -11, 12, -19, 20, -27, 28, -35)
         for dx in (4, 10) for s in (1, -1)]


def _log_if_spread(ax, values, axis: str = "x") -> bool:
    """Log scale on `axis` where the positive values span more than LOG_SPREAD: on a linear axis the
    fast variants crowd against the origin while fp32 sits alone at the far end."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals or min(vals) <= 0 or max(vals) / min(vals) <= LOG_SPREAD:
        return False
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    scale = ax.xaxis if axis == "x" else ax.yaxis
    scale.set_major_locator(LogLocator(subs=(1, 2, 5)))     # 1 2 5 10 20 50 ..., written as plain numbers
    scale.set_major_formatter(ScalarFormatter())
    scale.set_minor_formatter(NullFormatter())
    return True


def _place_labels(fig) -> None:
    """Moves every point name (gid LABEL) of `fig` to the nearest spot in SPOTS where it overlaps
    no name placed before it, no point and nothing outside its axes; where every spot collides,
    the one with the least overlap. Run after the layout is final: it works in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = sorted((a for a in ax.texts if a.get_gid() == LABEL), key=lambda a: (a.xy[0], a.xy[1]))
        if not labels:
            continue
        frame = ax.get_window_extent(renderer)
        points = [ax.transData.transform(a.xy) for a in labels]
        taken = [(x - 4, y - 4, x + 4, y + 4) for x, y in points]
        for a in labels:
            best = None
            for dx, dy, ha in SPOTS:
                a.set_position((dx, dy))
                a.set_horizontalalignment(ha)
                b = a.get_window_extent(renderer)
                box = (b.x0, b.y0, b.x1, b.y1)
                cost = sum(_overlap(box, o) for o in taken) + b.width * b.height - _overlap(box, (
                    frame.x0, frame.y0, frame.x1, frame.y1))
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, ha, box)
                if cost == 0:
                    break
            _, dx, dy, ha, box = best
            a.set_position((dx, dy))
            a.set_horizontalalignment(ha)
            taken.append(box)


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def why_not_drawn(t: RecordIndex, fam: str, row: dict, reference: str) -> str:
    """Why a variant's average retention is not a point: the reasons the tables give
    (analysis.retention_na), per task when the model has several."""
    tasks = [task for task in t.primary_tasks(fam) if task in row["tasks"]]
    reasons = []
    for task in tasks:
        st = row["tasks"][task]
        why = retention_na(st, reference)
        if why is None and not retention_is_point(st):
            lo, hi = st["retention_ci"]
            why = f"retention interval {lo:.2f}..{hi:.2f} contains 0"
        if why:
            reasons.append(f"{task}: {why}" if len(tasks) > 1 else why)
    return "; ".join(reasons) or "no retention to show"


def pareto_points(t: RecordIndex, all_rows: dict, batch: int, key: str, ykey: str, reference: str = DEFAULT.reference):
    """(points, their names, [(name, why)] withheld, retention spans) of one panel: (cost `key`,
    `ykey`) per (model, variant) benchmarked at `batch`. A retention that is missing or not precise
    enough (retention_is_point) is withheld with the tables' reason: a point would present noise as
    a position on the front."""
    label = _labeller(t)
    pts, names, withheld, spans = [], [], [], []
    for fam in t.families:
        shape = default_shape(t, fam, batch)
        for r in all_rows[fam]:
            b = t.bn(fam, r["variant"], batch, shape)
            if not b or (r[ykey] is None and ykey != "avg_retention"):
                continue
            if ykey == "avg_retention" and not r.get("avg_retention_is_point"):
                withheld.append((label(fam, r["variant"]), why_not_drawn(t, fam, r, reference)))
                continue
            pts.append((b[key], r[ykey]))
            names.append(label(fam, r["variant"]))
            spans.append(r.get("avg_retention_span") if ykey == "avg_retention" else None)
    return pts, names, withheld, spans


def _withheld_text(withheld: list) -> str:
    """`not drawn: <reason>: names`, one paragraph per reason, wrapped to a panel's width."""
    by_why: dict[str, list[str]] = {}
    for name, why in withheld:
        by_why.setdefault(why, []).append(name)
    return "\n".join(textwrap.fill(f"not drawn: {why}: {', '.join(names)}", 70) for why, names in by_why.items())


def _pareto_panel(ax, t: RecordIndex, all_rows: dict, batch: int, key: str, better_low: bool, ykey: str,
                  reference: str = DEFAULT.reference) -> bool:
    """One panel: every (model, variant) at `batch` as a point, the staircase of the front, and the
    names of the variants withheld from it with the reason."""
    pts, names, withheld, spans = pareto_points(t, all_rows, batch, key, ykey, reference)
    if withheld and pts:
        ax.text(0.01, 0.99, _withheld_text(withheld), transform=ax.transAxes, va="top", fontsize=7,
                color="dimgrey")
    if not pts:     # an empty panel: the reason in its middle, no axis to read
        ax.set_visible(bool(withheld))
        if withheld:
            ax.text(0.5, 0.5, _withheld_text(withheld), transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, color="dimgrey")
            ax.set_xticks([])
            ax.set_yticks([])
        return bool(withheld)
    xs, ys = zip(*pts)
    _log_if_spread(ax, xs)
    ax.scatter(xs, ys, color="tab:blue")
    bars = [(x, y, sp) for x, y, sp in zip(xs, ys, spans) if sp]
    if bars:    # a retention is an estimate: its interval is drawn with it
        ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars],
                    yerr=[[y - sp[0] for _, y, sp in bars], [sp[1] - y for _, y, sp in bars]], fmt="none",
                    ecolor="tab:blue", elinewidth=0.8, capsize=3, label="95% bootstrap interval")
    for x, y, n in zip(xs, ys, names):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, gid=LABEL)
    front = sorted(pareto_front([(x if better_low else -x, y) for x, y in pts]), key=lambda i: xs[i])
    # the staircase bounding what is attainable: right then up for latency, up then right for throughput
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", lw=1, ls="--",
            drawstyle="steps-post" if better_low else "steps-pre", label="Pareto front")
    ax.margins(0.1)
    return True


def plot_pareto(t: RecordIndex, all_rows: dict, out: Path, reference: str) -> list[str]:
    """Per batch size: average retention and average score vs p50, p99 and throughput."""
    plt = _pyplot()
    files = []
    for batch in sorted({k.batch for k in t.bench}):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), squeeze=False)
        drew = False
        shapes = ", ".join(shape_label(s) for s in sorted({default_shape(t, f, batch) for f in t.families} - {None}))
        for col, (key, xlabel, better_low) in enumerate(PARETO_X):
            for row, (ykey, ylabel) in enumerate((("avg_retention", f"avg gain retention vs {reference}"),
                                                  ("avg_score", "avg X-STILTs score"))):
                ax = axes[row][col]
                if not _pareto_panel(ax, t, all_rows, batch, key, better_low, ykey, reference):
                    continue
                drew = True
                if ykey == "avg_retention":
                    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
                ax.set_xlabel(f"{xlabel}, batch {batch}, {shapes}")
                ax.set_ylabel(ylabel)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best")
        if drew:
            fig.suptitle(f"Pareto fronts, batch {batch} (latency: lower is better; sequences/s: higher is better)")
            fig.tight_layout()
            _place_labels(fig)
            name = f"pareto_b{batch}.png"
            fig.savefig(out / name, dpi=90)
            files.append(name)
        plt.close(fig)
    return files


def plot_heatmaps(t: RecordIndex, out: Path, reference: str) -> list[str]:
    """Per model and task: variant x language map of the X-STILTs score change vs the reference."""
    plt = _pyplot()
    label = _labeller(t)
    files = []
    for fam in t.families:
        for task in t.tasks(fam):
            langs = t.langs(task, fam)
            variants = [v for v in t.variants(fam) if v != reference]
            grid = np.full((len(variants), len(langs)), np.nan)
            for i, v in enumerate(variants):
                for j, lang in enumerate(langs):
                    a, r = t.ev(fam, "xstilts", v, task, lang), t.ev(fam, "xstilts", reference, task, lang)
                    if a and r:
                        grid[i, j] = a["value"] - r["value"]
            if not np.isfinite(grid).any():
                continue
            lim = max(1.0, float(np.nanmax(np.abs(grid))))
            fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(langs) + 2), 0.45 * len(variants) + 1.5))
            im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            _cell_values(ax, grid, lim)
            ax.set_xticks(range(len(langs)), langs, fontsize=7, rotation=90)
            ax.set_yticks(range(len(variants)), variants, fontsize=8)
            ax.set_title(f"{label(fam, task)}: X-STILTs score change vs {reference}, points")
            fig.colorbar(im, ax=ax, fraction=0.03)
            fig.tight_layout()
            name = heatmap_name(t, fam, task)
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            files.append(name)
    return files


def _cell_values(ax, grid, lim: float) -> None:
    """Each finite cell's value written in it (white on the dark ends of the colour map)."""
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * lim else "black")


def plot_retention_vs_size(t: RecordIndex, all_rows: dict, out: Path, reference: str) -> list[str]:
    """Average retention per variant against model size (models whose records carry `params`)."""
    fams = [f for f in t.families if f in t.sizes]
    series = {v: sorted((t.sizes[f]["params"], r["avg_retention"]) for f in fams for r in all_rows[f]
                        if r["variant"] == v and r["avg_retention"] is not None)
              for v in sorted({r["variant"] for f in fams for r in all_rows[f]})}
    if not any(series.values()):
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for v, pts in series.items():
        if pts:
            ax.plot(*zip(*pts), marker="o", label=v)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"avg gain retention vs {reference}")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "retention_vs_size.png", dpi=90)
    plt.close(fig)
    return ["retention_vs_size.png"]


def plot_tokens_per_language(t: RecordIndex, out: Path) -> list[str]:
    """Mean tokens per sentence per language, and the p50 latency on each language's length mix."""
    per_lang = per_language_cost(t)
    if not per_lang:
        return []
    plt = _pyplot()
    label = _labeller(t)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    toks = {}
    for r in per_lang:
        toks.setdefault(r["lang"], r["mean_tokens"])
    a1.bar(list(toks), list(toks.values()))
    a1.set_ylabel("mean tokens per sentence")
    a1.tick_params(axis="x", rotation=90, labelsize=7)
    series = {}
    for r in per_lang:
        series.setdefault((r["family"], r["variant"], r["batch"]), []).append(
            (r["lang"], r["measured_ms"] if r["measured_ms"] is not None else r["implied_ms"]))
    for (fam, v, b), pts in series.items():
        a2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label(fam, v)} b{b}")
    _log_if_spread(a2, [y for pts in series.values() for _, y in pts], "y")
    a2.set_ylabel("p50 latency (ms) on the language's length mix")
    a2.tick_params(axis="x", rotation=90, labelsize=7)
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "tokens_per_language.png", dpi=90)
    plt.close(fig)
    return ["tokens_per_language.png"]


def plot_sensitivity(rs: list[dict], model: str, variant: str, out: Path) -> str:
    """Bar plot of per-layer sensitivity records (ranked), kept layers in red."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.18 * len(rs) + 1.2))
    ax.barh([r["unit"].replace("encoder.encoder.", "") for r in rs][::-1], [r["drop"] for r in rs][::-1],
            color=["tab:red" if r.get("kept") else "tab:blue" for r in rs][::-1])
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("fidelity drop when quantised alone (red: kept in higher precision)")
    fig.tight_layout()
    name = f"sensitivity_{model}_{variant}.png".replace("/", "_")
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def all_plots(t: RecordIndex, all_rows: dict, out: Path, comparison: Comparison) -> list[str]:
    """Every figure of the report except the calibration section's, against `comparison.reference`."""
    reference = comparison.reference
    return (plot_pareto(t, all_rows, out, reference) + plot_heatmaps(t, out, reference)
            + plot_retention_vs_size(t, all_rows, out, reference) + plot_tokens_per_language(t, out))

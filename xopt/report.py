"""`xopt report`: how much of the intermediate-task gain each variant keeps, against its cost.

Reads only result records (xopt.results). Definitions:
- score(task, lang, model, variant): the record's value;
- gain(variant) = score(X-STILTs, variant) - score(baseline, variant);
- retention(variant) = gain(variant) / gain(reference), reference = fp32;
- intervals: 95% paired bootstrap over examples (the same resampled examples for the four
  scores involved), from the per-example outcomes the eval records keep. A retention whose
  interval straddles zero or is wider than 1 is flagged: the gain is too small for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt import results
from xopt.errors import XoptError


@dataclass
class Tables:
    evals: dict = field(default_factory=dict)     # (model, variant, task, lang) -> record
    bench: dict = field(default_factory=dict)     # (model, variant, batch, shape) -> record
    skipped: list = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return sorted({k[2] for k in self.evals})

    def variants(self) -> list[str]:
        order = {}
        for k in list(self.evals) + list(self.bench):
            order.setdefault(k[1], len(order))
        return sorted(order, key=order.get)

    def langs(self, task: str) -> list[str]:
        return sorted({k[3] for k in self.evals if k[2] == task and k[3] != "avg"})


def shape_key(rec: dict) -> str:
    return f"s{rec['seq_len']}" if rec.get("seq_len") else f"len:{rec['length_dist']['source']}"


def load(paths) -> Tables:
    recs, skipped = results.read(paths)
    t = Tables(skipped=skipped)
    for r in recs:   # later records win: re-running a measurement replaces it
        if r["kind"] == "eval":
            t.evals[(r["model"], r["variant"], r["task"], r["lang"])] = r
        elif r["kind"] == "bench":
            t.bench[(r["model"], r["variant"], r["batch"], shape_key(r))] = r
    if not t.evals and not t.bench:
        raise XoptError(f"no valid records in {', '.join(map(str, paths))}")
    return t


def _outcomes(t: Tables, model, variant, task, lang):
    r = t.evals.get((model, variant, task, lang))
    return None if r is None or "outcomes" not in r else np.asarray(r["outcomes"], dtype=np.float64)


def gain_stats(t: Tables, task: str, variant: str, reference: str, baseline: str, xstilts: str,
               langs=None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Average over `langs` (default: all but en) of score, gain and retention, with 95%
    paired-bootstrap intervals. None when a needed record is missing."""
    langs = [lang for lang in (langs or t.langs(task)) if lang != "en"]
    rng = np.random.default_rng(seed)
    cols = {"x": [], "b": [], "xr": [], "br": []}
    for lang in langs:
        arrs = [_outcomes(t, m, v, task, lang) for m, v in
                ((xstilts, variant), (baseline, variant), (xstilts, reference), (baseline, reference))]
        if any(a is None for a in arrs) or len({len(a) for a in arrs}) != 1 or not len(arrs[0]):
            continue
        idx = rng.integers(0, len(arrs[0]), (n_boot, len(arrs[0])))
        for key, a in zip(cols, arrs):
            cols[key].append((a.mean(), a[idx].mean(1)))
    if not cols["x"]:
        return None
    point = {k: np.mean([p for p, _ in v]) * 100 for k, v in cols.items()}
    boot = {k: np.mean([b for _, b in v], axis=0) * 100 for k, v in cols.items()}
    gain, gain_ref = point["x"] - point["b"], point["xr"] - point["br"]
    g_b, gr_b = boot["x"] - boot["b"], boot["xr"] - boot["br"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ret_b = g_b / gr_b
    ret = gain / gain_ref if gain_ref else math.nan
    finite = ret_b[np.isfinite(ret_b)]
    lo, hi = np.percentile(finite, [2.5, 97.5]) if len(finite) else (math.nan, math.nan)
    g_lo, g_hi = np.percentile(g_b, [2.5, 97.5])
    gr_lo, gr_hi = np.percentile(gr_b, [2.5, 97.5])
    return {"task": task, "variant": variant, "n_langs": len(cols["x"]), "score": point["x"],
            "baseline_score": point["b"], "gain": gain, "gain_ci": (g_lo, g_hi), "ref_gain": gain_ref,
            "ref_gain_ci": (gr_lo, gr_hi), "retention": ret, "retention_ci": (lo, hi),
            "retention_uncertain": bool(gr_lo <= 0 <= gr_hi or not (hi - lo < 1)),
            "score_drop": point["x"] - point["xr"]}


def worst_language(t: Tables, task: str, variant: str, reference: str, model: str) -> tuple[str, float] | None:
    """The language whose score drops most from the reference (for `model`)."""
    drops = []
    for lang in t.langs(task):
        a, r = t.evals.get((model, variant, task, lang)), t.evals.get((model, reference, task, lang))
        if a and r:
            drops.append((a["value"] - r["value"], lang))
    return (min(drops)[1], min(drops)[0]) if drops else None


def fmt_ci(x: float, ci, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def summary_rows(t: Tables, reference="fp32", baseline="baseline", xstilts="xstilts", batch=1,
                 shape="s128") -> list[dict]:
    """One row per variant: per task score/gain/retention/worst language, and cost."""
    rows = []
    ref_bench = t.bench.get((xstilts, reference, batch, shape))
    for v in t.variants():
        row = {"variant": v, "tasks": {}}
        for task in t.tasks:
            st = gain_stats(t, task, v, reference, baseline, xstilts)
            if st:
                st["worst"] = worst_language(t, task, v, reference, xstilts)
                row["tasks"][task] = st
        b = t.bench.get((xstilts, v, batch, shape))
        if b:
            row["p50_ms"], row["p99_ms"] = b["p50_ms"], b["p99_ms"]
            row["throughput_seq_s"] = b["throughput_seq_s"]
            row["speedup"] = ref_bench["p50_ms"] / b["p50_ms"] if ref_bench else None
            row["round_p50_ms"] = b.get("round_p50_ms")
        rows.append(row)
    return rows


# ------------------------------------------------------------------ console tables

def print_eval(recs: list[dict]) -> None:
    from rich.table import Table

    from xopt.progress import out_console

    t = Table("model", "variant", "task", "lang", "metric", "value", "n")
    for r in recs:
        t.add_row(r["model"], r["variant"], r["task"], r["lang"], r["metric"], f"{r['value']:.2f}",
                  str(r["n_examples"]))
    out_console().print(t)


def print_bench(recs: list[dict], compare: str | None = None) -> None:
    from rich.table import Table

    from xopt.progress import out_console

    ref = {}
    if compare:
        ref = {(r["model"], r["batch"], shape_key(r)): r for r in recs if r["variant"] == compare}
        if not ref:
            raise XoptError(f"--compare {compare}: no such variant among the measured ones")
    t = Table("model", "variant", "batch", "shape", "p50 ms", "p99 ms", "round p50s", "seq/s", "tok/s",
              "peak MB", *(["p50 vs " + compare] if compare else []))
    for r in recs:
        name = Path(r["variant_dir"]).name if r.get("variant_dir") else r["variant"]
        variant = r["variant"] + ("" if name == r["variant"] else f" ({name})")
        cells = [r["model"], variant, str(r["batch"]), shape_key(r), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 " ".join(f"{x:.1f}" for x in r.get("round_p50_ms", [])), f"{r['throughput_seq_s']:.1f}",
                 f"{r['throughput_tok_s']:.0f}", f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else "n/a"]
        if compare:
            rr = ref.get((r["model"], r["batch"], shape_key(r)))
            cells.append(f"{rr['p50_ms'] / r['p50_ms']:.2f}x" if rr else "n/a")
        t.add_row(*cells)
    out_console().print(t)


def summary_table(rows: list[dict], tasks: list[str], reference: str = "fp32"):
    """The demo's closing table (rich), narrow enough for an 80-column terminal."""
    from rich.table import Table

    t = Table(title="X-STILTs gain kept by each variant (zero-shot languages)", title_justify="left")
    t.add_column("variant")
    for task in tasks:
        short = task.removeprefix("demo-")
        t.add_column(f"{short}\nscore", justify="right")
        t.add_column(f"{short}\nretention\n(95% CI)", justify="right")
        t.add_column(f"{short}\nworst", justify="right")
    t.add_column("p50 ms\nb1 s128", justify="right")
    t.add_column(f"vs\n{reference}", justify="right")
    for r in rows:
        cells = [r["variant"]]
        for task in tasks:
            st = r["tasks"].get(task)
            if not st:
                cells += ["n/a"] * 3
                continue
            lo, hi = st["retention_ci"]
            if st["retention_uncertain"] or not np.isfinite(st["retention"]):
                g_lo, g_hi = st["ref_gain_ci"]
                ret = f"n/a: {reference} gain\n{st['ref_gain']:+.1f} ({g_lo:+.1f}..{g_hi:+.1f})"
            else:
                ret = f"{st['retention']:.2f}\n({lo:.2f}..{hi:.2f})"
            w = st.get("worst")
            cells += [f"{st['score']:.1f}", ret, f"{w[0]} {w[1]:+.1f}" if w else "n/a"]
        cells += [f"{r['p50_ms']:.1f}" if "p50_ms" in r else "n/a",
                  f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"]
        t.add_row(*cells)
    return t


# ------------------------------------------------------------------ files

def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _plots(t: Tables, rows: list[dict], out: Path, reference: str, xstilts: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    tasks = t.tasks
    # 1. retention vs latency, per task
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in rows:
            st = r["tasks"].get(task)
            if st and "p50_ms" in r and np.isfinite(st["retention"]):
                lo, hi = st["retention_ci"]
                ax.errorbar(r["p50_ms"], st["retention"], yerr=[[st["retention"] - lo], [hi - st["retention"]]],
                            fmt="o", capsize=3)
                ax.annotate(r["variant"], (r["p50_ms"], st["retention"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("p50 latency, batch 1, seq 128 (ms)")
        ax.set_ylabel("gain retention vs fp32")
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(out / "retention_vs_latency.png", dpi=110)
    plt.close(fig)
    files.append("retention_vs_latency.png")
    # 2. variant x language heat map of score change vs the reference (X-STILTs model)
    for task in tasks:
        langs = t.langs(task)
        variants = [v for v in t.variants() if v != reference]
        grid = np.full((len(variants), len(langs)), np.nan)
        for i, v in enumerate(variants):
            for j, lang in enumerate(langs):
                a, r = t.evals.get((xstilts, v, task, lang)), t.evals.get((xstilts, reference, task, lang))
                if a and r:
                    grid[i, j] = a["value"] - r["value"]
        if not np.isfinite(grid).any():
            continue
        lim = max(1.0, float(np.nanmax(np.abs(grid))))
        fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(langs) + 2), 0.45 * len(variants) + 1.5))
        im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(langs)), langs, fontsize=7, rotation=90)
        ax.set_yticks(range(len(variants)), variants, fontsize=8)
        ax.set_title(f"{task}: score change vs {reference} ({xstilts}), points")
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        name = f"heatmap_{task}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def calibration_section(recs: list[dict], reference: str = "fp32", out: Path | None = None,
                        n_boot: int = 1000, seed: int = 0) -> list[str]:
    """Markdown lines on calibration (issue 7), [] when the records hold none. Self-contained:
    takes raw records (xopt.results.read), so several calibrations of one variant stay apart.

    1. methods: per (model, variant, calibration) and task, the average and the worst-language
       score drop vs `reference` over the zero-shot languages;
    2. en-only vs multilingual calibration (same variant and method, calibration languages
       ["en"] vs several): per language both scores and the difference with a 95% paired
       bootstrap interval over the examples;
    3. sensitivity records: the ranking (and, with `out`, a bar plot sensitivity.png)."""
    evals = [r for r in recs if r.get("kind") == "eval" and r.get("lang") != "avg"]
    cal = [r for r in evals if r.get("calibration")]
    sens = [r for r in recs if r.get("kind") == "sensitivity"]
    if not cal and not sens:
        return []

    def label(c: dict) -> str:
        langs = c.get("langs") or []
        where = "en" if langs == ["en"] else (",".join(langs) if len(langs) <= 4 else f"{len(langs)} langs")
        kept = f", {len(c['keep'])} kept" if c.get("keep") else ""
        return f"{c.get('method')} / {where} / {c.get('samples')}{kept}"

    ref = {(r["model"], r["task"], r["lang"]): r for r in evals if r["variant"] == reference}
    groups: dict[tuple, dict] = {}
    for r in cal:
        groups.setdefault((r["model"], r["variant"], label(r["calibration"])), {})[(r["task"], r["lang"])] = r
    md = ["## Calibration", ""]
    rows = []
    for (model, variant, lab), by in groups.items():
        for task in sorted({t for t, _ in by}):
            drops = [(by[(task, lang)]["value"] - ref[(model, task, lang)]["value"], lang)
                     for t, lang in by if t == task and lang != "en" and (model, task, lang) in ref]
            if drops:
                worst = min(drops)
                rows.append([model, variant, lab, task, str(len(drops)), f"{np.mean([d for d, _ in drops]):+.2f}",
                             f"{worst[1]} ({worst[0]:+.1f})"])
    if rows:
        md += [f"Score change vs {reference} (points), zero-shot languages.", "",
               _md_table(["model", "variant", "calibration", "task", "langs", "avg change", "worst lang (change)"], rows), ""]
    rng = np.random.default_rng(seed)
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
    for model, variant, lab, by, lab2, by2 in pairs:
        for task in sorted({t for t, _ in by}):
            body, diffs = [], []
            for t, lang in sorted(k for k in by if k[0] == task):
                a, b = by.get((task, lang)), by2.get((task, lang))
                if not (a and b) or a.get("example_ids") != b.get("example_ids"):
                    continue
                oa, ob = np.asarray(a.get("outcomes", []), float), np.asarray(b.get("outcomes", []), float)
                d = b["value"] - a["value"]
                lo = hi = math.nan
                if len(oa) and len(oa) == len(ob):
                    idx = rng.integers(0, len(oa), (n_boot, len(oa)))
                    lo, hi = np.percentile((ob[idx] - oa[idx]).mean(1) * 100, [2.5, 97.5])
                r = ref.get((model, task, lang))
                diffs.append((d, lang))
                body.append([lang, f"{r['value']:.1f}" if r else "n/a", f"{a['value']:.1f}", f"{b['value']:.1f}",
                             f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + (" *" if lo > 0 or hi < 0 else "")])
            if body:
                top = ", ".join(f"{lang} {d:+.1f}" for d, lang in sorted(diffs, reverse=True)[:3])
                md += [f"### {model} {variant}, {task}: en-only ({lab}) vs multilingual ({lab2}) calibration", "",
                       _md_table(["lang", reference, "en-only", "multilingual", "multi - en [95% CI]"], body), "",
                       f"Mean difference {np.mean([d for d, _ in diffs]):+.2f} points over {len(diffs)} languages; "
                       f"largest gains: {top}. `*`: interval excludes 0.", ""]
    if sens:
        md += ["### Per-layer sensitivity (quantised alone; drop of 100 x cosine to full precision, held-out "
               "multilingual sample)", ""]
        by_run: dict[tuple, list] = {}
        for r in sens:
            by_run.setdefault((r["model"], r["variant"], label(r["calibration"])), []).append(r)
        for (model, variant, lab), rs in by_run.items():
            rs = sorted(rs, key=lambda r: r["rank"])
            md += [f"{model} {variant}, {lab}:", "",
                   _md_table(["rank", "unit", "drop", "kept"], [[str(r["rank"]), r["unit"], f"{r['drop']:.3g}",
                                                               "yes" if r.get("kept") else ""] for r in rs[:20]]), ""]
            if out is not None:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt

                fig, ax = plt.subplots(figsize=(7, 0.18 * len(rs) + 1.2))
                ax.barh([r["unit"].replace("encoder.encoder.", "") for r in rs][::-1], [r["drop"] for r in rs][::-1],
                        color=["tab:red" if r.get("kept") else "tab:blue" for r in rs][::-1])
                ax.tick_params(axis="y", labelsize=6)
                ax.set_xlabel("fidelity drop when quantised alone (red: kept in higher precision)")
                fig.tight_layout()
                name = f"sensitivity_{model}_{variant}.png".replace("/", "_")
                fig.savefig(Path(out) / name, dpi=110)
                plt.close(fig)
                md += [f"![{name}]({name})", ""]
    return md


def write_report(paths, out: Path, reference="fp32", baseline="baseline", xstilts="xstilts",
                 force: bool = False) -> Path:
    """report.md + PNGs in `out` (atomically)."""
    from xopt.manifest import atomic_dir

    t = load(paths)
    rows = summary_rows(t, reference, baseline, xstilts)
    tasks = t.tasks
    with atomic_dir(Path(out), force=force) as tmp:
        images = _plots(t, rows, tmp, reference, xstilts)
        md = ["# xopt report", "",
              f"Gain = score({xstilts}) - score({baseline}) on the same variant; retention = gain / gain on "
              f"{reference}. Averages over zero-shot languages (all but en); 95% paired bootstrap intervals.", ""]
        header = ["variant"]
        for task in tasks:
            header += [f"{task} score", f"{task} gain", f"{task} retention", f"{task} worst lang"]
        header += ["p50 ms (b1 s128)", "speed-up vs " + reference]
        body = []
        for r in rows:
            cells = [r["variant"]]
            for task in tasks:
                st = r["tasks"].get(task)
                if not st:
                    cells += ["n/a"] * 4
                    continue
                w = st.get("worst")
                ret = fmt_ci(st["retention"], st["retention_ci"]) + (" ⚠ gain too small" if st["retention_uncertain"]
                                                                   else "")
                cells += [f"{st['score']:.2f}", fmt_ci(st["gain"], st["gain_ci"]), ret,
                          f"{w[0]} ({w[1]:+.1f})" if w else "n/a"]
            cells += [f"{r['p50_ms']:.2f}" if "p50_ms" in r else "not measured",
                      f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"]
            body.append(cells)
        md += [_md_table(header, body), ""]
        for task in tasks:
            langs = t.langs(task)
            md += [f"## {task}: per language ({xstilts} score, gain over {baseline} in brackets)", ""]
            variants = t.variants()
            prow = []
            for lang in langs:
                cells = [lang, str(t.evals.get((xstilts, reference, task, lang), {}).get("n_examples", ""))]
                for v in variants:
                    x, b = t.evals.get((xstilts, v, task, lang)), t.evals.get((baseline, v, task, lang))
                    cells.append(f"{x['value']:.1f} ({x['value'] - b['value']:+.1f})" if x and b else
                                 f"{x['value']:.1f}" if x else "n/a")
                prow.append(cells)
            md += [_md_table(["lang", "n", *variants], prow), ""]
        if t.bench:
            md += ["## Cost", "", "Interleaved rounds; `rounds` lists each round's p50 (drift of a shared machine).", ""]
            brow = []
            for (m, v, b, s), r in sorted(t.bench.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][0])):
                brow.append([m, v, str(b), s, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                             " ".join(f"{x:.1f}" for x in r.get("round_p50_ms", [])),
                             f"{r['throughput_seq_s']:.1f}", f"{r['throughput_tok_s']:.0f}",
                             f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else "n/a",
                             f"{r.get('artefact_mb', float('nan')):.0f}"])
            md += [_md_table(["model", "variant", "batch", "shape", "p50 ms", "p99 ms", "rounds", "seq/s", "tok/s",
                              "peak RSS MB", "artefact MB"], brow), ""]
        md += [f"![{name}]({name})" for name in images] + [""]
        md += calibration_section(results.read(paths)[0], reference, tmp)
        if t.skipped:
            md += ["## Skipped records", ""] + [f"- {s.where}: {s.why}" for s in t.skipped] + [""]
        (tmp / "report.md").write_text("\n".join(md))
    return Path(out) / "report.md"

"""Score, intermediate-task gain and gain retention, with paired-bootstrap intervals.

Definitions:
- score(task, lang, checkpoint, variant) from the per-example outcomes the eval record keeps
  (the record's `value` when it keeps none: then no interval);
- gain(variant) = score(X-STILTs, variant) - score(baseline, variant);
- retention(variant) = gain(variant) / gain(reference), reference = fp32;
- intervals: 95% paired bootstrap over examples: within a language the same resampled
  examples serve the four scores involved (X-STILTs and baseline, on the variant and on the
  reference), and every variant; averages over languages average the per-language
  replicates. A retention whose reference-gain interval contains zero, or whose own interval
  is wider than 1, is flagged: the gain is too small to say how much of it survives.

Records of one language are paired only when they have as many examples (and the same
`example_ids` digest, when they carry one).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from xopt.analysis.bootstrap import Outcomes, percentile_ci, resample_weights
from xopt.comparison import DEFAULT
from xopt.analysis.index import RecordIndex

# (short name, checkpoint role, on the reference variant?) of the four scores behind a retention
ROLES = (("x", "xstilts", False), ("b", "baseline", False), ("xr", "xstilts", True), ("br", "baseline", True))


def lang_replicates(t: RecordIndex, family: str, task: str, lang: str, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """{(role, variant): (score, bootstrap replicates or None)} for every record of one language.
    One resampling of the examples serves every record (paired across checkpoints and
    variants); a record is resampled when it has the example set most records share."""
    key = ("reps", family, task, lang, n_boot, seed)
    if key in t.cache:
        return t.cache[key]
    recs = {(k.role, k.variant): r for k, r in t.evals.items()
            if k.family == family and k.task == task and k.lang == lang}
    res = {k: (float(r["value"]), None) for k, r in recs.items()}
    outs = {}
    for k, r in recs.items():
        try:
            outs[k] = Outcomes(r)
        except ValueError:
            pass
    common = Counter((o.n, o.ids) for o in outs.values()).most_common(1)
    if common and common[0][0][0] > 0:
        n, ids = common[0][0]
        w = resample_weights(n, n_boot, seed, f"{family}/{task}/{lang}")
        paired = [(k, o) for k, o in outs.items() if (o.n, o.ids) == (n, ids)]
        cols = [o.columns() for _, o in paired]
        sums = w @ np.concatenate(cols, axis=1)      # one product for every record of the language
        at = 0
        for (k, o), c in zip(paired, cols):
            res[k] = (float(o.score()), o.from_sums(sums[:, at:at + c.shape[1]]))
            at += c.shape[1]
    t.cache[key] = res
    return res


def lang_scores(t: RecordIndex, family: str, task: str, lang: str, variant: str, reference: str,
                n_boot: int = 1000, seed: int = 0) -> dict | None:
    """{x, b, xr, br: (score, replicates or None), n} for one language; None when a record is missing."""
    reps = lang_replicates(t, family, task, lang, n_boot, seed)
    got = {k: reps.get((role, reference if ref else variant)) for k, role, ref in ROLES}
    if not all(got.values()):
        return None
    if any(v[1] is None for v in got.values()):     # not all four paired: points only
        got = {k: (v[0], None) for k, v in got.items()}
    got["n"] = t.ev(family, "xstilts", variant, task, lang)["n_examples"]
    return got


def gain_stats(t: RecordIndex, task: str, variant: str, reference: str = DEFAULT.reference, langs=None,
               family: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Average over `langs` (default: all but en) of score, gain and retention, with 95%
    paired-bootstrap intervals (None when some language lacks per-example outcomes).
    None when no language has the four records."""
    family = family or t.family
    langs = [la for la in (langs if langs is not None else t.langs(task, family)) if la != "en"]
    per = [(la, s) for la in langs if (s := lang_scores(t, family, task, la, variant, reference, n_boot, seed))]
    if not per:
        return None
    point = {k: float(np.mean([s[k][0] for _, s in per])) for k, _, _ in ROLES}
    has_ci = all(s[k][1] is not None for _, s in per for k, _, _ in ROLES)
    gain, ref_gain = point["x"] - point["b"], point["xr"] - point["br"]
    st = {"task": task, "variant": variant, "family": family, "langs": [la for la, _ in per], "n_langs": len(per),
          "n_examples": sum(s["n"] for _, s in per), "score": point["x"], "baseline_score": point["b"],
          "ref_score": point["xr"], "ref_baseline_score": point["br"], "gain": gain, "ref_gain": ref_gain,
          "retention": gain / ref_gain if ref_gain else math.nan, "score_drop": point["x"] - point["xr"],
          "has_ci": has_ci, "gain_ci": (math.nan, math.nan), "ref_gain_ci": (math.nan, math.nan),
          "retention_ci": (math.nan, math.nan)}
    if has_ci:
        boot = {k: np.mean([s[k][1] for _, s in per], axis=0) for k, _, _ in ROLES}
        g, gr = boot["x"] - boot["b"], boot["xr"] - boot["br"]
        with np.errstate(divide="ignore", invalid="ignore"):
            st["retention_ci"] = percentile_ci(g / gr)
        st["gain_ci"], st["ref_gain_ci"] = percentile_ci(g), percentile_ci(gr)
    lo, hi = st["retention_ci"]
    glo, ghi = st["ref_gain_ci"]
    st["retention_uncertain"] = bool(not has_ci or ref_gain <= 0 or glo <= 0 <= ghi or not (hi - lo < 1))
    return st


def worst_language(t: RecordIndex, task: str, variant: str, reference: str = DEFAULT.reference,
                   family: str | None = None) -> tuple[str, float] | None:
    """The zero-shot language whose X-STILTs score drops most from the reference."""
    family = family or t.family
    drops = []
    for lang in t.langs(task, family):
        a, r = t.ev(family, "xstilts", variant, task, lang), t.ev(family, "xstilts", reference, task, lang)
        if a and r and lang != "en":
            drops.append((a["value"] - r["value"], lang))
    return (min(drops)[1], min(drops)[0]) if drops and min(drops)[0] < 0 else None


def retention_is_point(st: dict) -> bool:
    """Whether a retention is precise enough to show as a point: it has an interval, is not
    flagged (the reference gain's interval excludes 0 and its own is narrower than 1), and its
    own interval excludes 0. Otherwise a plot shows the score, or the interval, instead."""
    lo, hi = st["retention_ci"]
    return bool(st["has_ci"] and not st["retention_uncertain"] and np.isfinite(st["retention"])
                and not lo <= 0 <= hi)


def retention_na(st: dict, reference: str = DEFAULT.reference) -> str | None:
    """Why a task's retention is not a number to quote (None: it is one), by the rule the demo's
    summary table shows n/a by (`retention_uncertain`, or no finite value): a retention over a
    gain that is not clearly above zero is noise divided by noise (4.0 with an interval of 1e14)."""
    g = st["ref_gain"]
    if g <= 0:
        return f"no {reference} gain to retain ({g:+.1f})"
    if not st["has_ci"]:
        return f"no per-example outcomes: whether the {reference} gain ({g:+.1f}) is significant is unknown"
    glo, ghi = st["ref_gain_ci"]
    if glo <= 0 <= ghi:
        return f"{reference} gain {g:+.1f} is not significant (its 95% interval {glo:+.1f}..{ghi:+.1f} contains 0)"
    lo, hi = st["retention_ci"]
    if not (np.isfinite(st["retention"]) and hi - lo < 1):
        return f"retention interval {lo:.2f}..{hi:.2f} is wider than 1: the {reference} gain ({g:+.1f}) is too small"
    return None


def fmt_ci(x: float | None, ci, digits: int = 2) -> str:
    """`x [lo, hi]`, `x` when there is no interval, n/a when there is no value."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if ci is None or not all(np.isfinite(ci)):
        return f"{x:.{digits}f}"
    return f"{x:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_retention(st: dict, reference: str = DEFAULT.reference, short: bool = False) -> str:
    """A retention with its interval, flagged when the gain is too small to say (see the module doc)."""
    if st["ref_gain"] <= 0:
        return "n/a: no gain" if short else f"n/a: no {reference} gain ({st['ref_gain']:+.1f})"
    s = fmt_ci(st["retention"], st["retention_ci"])
    return s + (" ⚠ gain too small" if st["retention_uncertain"] and st["has_ci"] else
                " (no per-example outcomes)" if not st["has_ci"] else "")

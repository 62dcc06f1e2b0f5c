"""`xopt report`: how much of the intermediate-task gain each variant keeps, against its cost.

Reads only result records (xopt.records). Definitions:
- score(task, lang, checkpoint, variant) from the per-example outcomes the eval record keeps
  (the record's `value` when it keeps none: then no interval);
- gain(variant) = score(X-STILTs, variant) - score(baseline, variant);
- retention(variant) = gain(variant) / gain(reference), reference = fp32;
- intervals: 95% paired bootstrap over examples: within a language the same resampled
  examples serve the four scores involved (X-STILTs and baseline, on the variant and on the
  reference), and every variant; averages over languages average the per-language
  replicates. A retention whose reference-gain interval contains zero, or whose own interval
  is wider than 1, is flagged: the gain is too small to say how much of it survives.

Per-example outcomes an eval record may keep (one of):
- `outcomes`: list of numbers, one per example; score = 100 * mean (accuracy, exact match,
  per-example F1 of extractive QA);
- `counts` (alias `outcome_counts`): list of [tp, fp, fn], one per example (sentence, or
  source sentence for BUCC); score = 100 * micro-F1 of the summed counts (NER: F1 of the
  summed counts, not the mean of per-sentence F1). With `n_units` > len(counts), the rows
  kept are the non-zero ones and the rest are zero rows (they count when resampling).
Records of one language are paired only when they have as many examples (and the same
`example_ids` digest, when they carry one).

Models: records are grouped by `base_model` (the encoder: "family"); within a family the
baseline and X-STILTs checkpoints are told apart by model name (--baseline/--xstilts) or by
the record's `role`. Sizes (`params`, `non_embedding_params`) come from the records.
"""

from __future__ import annotations

import base64
import html
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xopt import records
from xopt.errors import XoptError

# ------------------------------------------------------------------ language groups

# Resource class: Joshi et al. 2020, "The State and Fate of Linguistic Diversity and Inclusion
# in the NLP World" (ACL 2020), taxonomy file lang2tax.txt (microsoft.github.io/linguisticdiversity):
# 5 "winners" ... 0 "left-behinds". Script: ISO 15924. Codes: XTREME's 40 languages.
LANGS = {
    "af": (3, "Latn"), "ar": (5, "Arab"), "bg": (3, "Cyrl"), "bn": (3, "Beng"), "de": (5, "Latn"),
    "el": (3, "Grek"), "en": (5, "Latn"), "es": (5, "Latn"), "et": (3, "Latn"), "eu": (4, "Latn"),
    "fa": (4, "Arab"), "fi": (4, "Latn"), "fr": (5, "Latn"), "he": (3, "Hebr"), "hi": (4, "Deva"),
    "hu": (4, "Latn"), "id": (3, "Latn"), "it": (4, "Latn"), "ja": (5, "Jpan"), "jv": (1, "Latn"),
    "ka": (3, "Geor"), "kk": (3, "Cyrl"), "ko": (4, "Hang"), "ml": (1, "Mlym"), "mr": (2, "Deva"),
    "ms": (3, "Latn"), "my": (1, "Mymr"), "nl": (4, "Latn"), "pt": (4, "Latn"), "ru": (4, "Cyrl"),
    "sw": (2, "Latn"), "ta": (3, "Taml"), "te": (1, "Telu"), "th": (3, "Thai"), "tl": (3, "Latn"),
    "tr": (4, "Latn"), "ur": (3, "Arab"), "vi": (4, "Latn"), "yo": (2, "Latn"), "zh": (5, "Hani"),
}
RESOURCE_GROUPS = (("high resource (Joshi class 4-5)", (4, 5)), ("mid resource (class 3)", (3,)),
                   ("low resource (class 0-2)", (0, 1, 2)))


def lang_groups(langs) -> list[tuple[str, list[str]]]:
    """(group name, its languages among `langs`) for resource classes and scripts."""
    out = []
    for name, classes in RESOURCE_GROUPS:
        members = [la for la in langs if la in LANGS and LANGS[la][0] in classes]
        if members:
            out.append((name, members))
    scripts = sorted({LANGS[la][1] for la in langs if la in LANGS})
    for s in scripts:
        out.append((f"script {s}", [la for la in langs if la in LANGS and LANGS[la][1] == s]))
    if len(scripts) > 1 and "Latn" in scripts:
        out.append(("non-Latin scripts", [la for la in langs if la in LANGS and LANGS[la][1] != "Latn"]))
    unknown = [la for la in langs if la not in LANGS]
    if unknown:
        out.append(("not classified", unknown))
    return out


# X-STILTs paper (Phang et al. 2020, "English intermediate-task training improves zero-shot
# cross-lingual transfer too", AACL), XLM-R large, test, averaged over languages:
# task -> (metric, baseline, best X-STILTs).
PAPER = {"xnli": ("accuracy", 79.2, 80.4), "pawsx": ("accuracy", 86.4, 87.7), "panx": ("F1", 65.4, 64.7),
         "xquad": ("F1", 76.6, 77.2), "mlqa": ("F1", 71.6, 72.3), "tydiqa": ("F1", 65.1, 76.0)}


def paper_task(task: str) -> str | None:
    key = re.sub(r"[^a-z]", "", task.lower()).removeprefix("xtreme")
    key = {"wikiann": "panx", "ner": "panx", "tydiqagoldp": "tydiqa"}.get(key, key)
    return key if key in PAPER else None


def is_xlmr_large(family: str) -> bool:
    return bool(re.search(r"xlm[-_]?r(oberta)?[-_]?large", family.lower()))


# ------------------------------------------------------------------ loading

@dataclass
class Tables:
    evals: dict = field(default_factory=dict)     # (family, role, variant, task, lang) -> record
    bench: dict = field(default_factory=dict)     # (family, variant, batch, shape) -> record
    skipped: list = field(default_factory=list)   # records.Skipped
    notes: list = field(default_factory=list)     # things a reader must know (mixed models, ...)
    sizes: dict = field(default_factory=dict)     # family -> {"params": .., "non_embedding_params": ..}
    records: list = field(default_factory=list)   # every valid record (hooks such as calibration)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def families(self) -> list[str]:
        order = {}
        for k in list(self.evals) + list(self.bench):
            order.setdefault(k[0], len(order))
        return sorted(order, key=order.get)

    @property
    def family(self) -> str:
        return self.families[0] if self.families else "?"

    def tasks(self, family: str | None = None) -> list[str]:
        return sorted({k[3] for k in self.evals if family in (None, k[0])})

    def variants(self, family: str | None = None) -> list[str]:
        order = {}
        for k in list(self.evals) + list(self.bench):
            if family in (None, k[0]):
                order.setdefault(k[2] if len(k) == 5 else k[1], len(order))
        return sorted(order, key=order.get)

    def langs(self, task: str, family: str | None = None) -> list[str]:
        return sorted({k[4] for k in self.evals if k[3] == task and k[4] != "avg" and family in (None, k[0])})

    def ev(self, family, role, variant, task, lang) -> dict | None:
        return self.evals.get((family, role, variant, task, lang))

    def shapes(self, family: str | None = None) -> list[tuple[int, str]]:
        return sorted({(k[2], k[3]) for k in self.bench if family in (None, k[0])})


def shape_key(rec: dict) -> str:
    """s128, len:demo:de, ...; prefixed by the scenario when it is a LoadGen one (offline/s128)."""
    ld = rec.get("length_dist")
    key = f"s{rec['seq_len']}" if rec.get("seq_len") else f"len:{ld['source'] if isinstance(ld, dict) else ld}"
    scenario = rec.get("scenario")
    return key if scenario in (None, "fixed-batch") else f"{scenario}/{key}"


def shape_label(shape: str) -> str:
    return f"seq {shape[1:]}" if shape.startswith("s") else f"lengths {shape[4:]}"


def _role(rec: dict, baseline: str, xstilts: str) -> str | None:
    if rec["model"] == baseline:
        return "baseline"
    if rec["model"] == xstilts:
        return "xstilts"
    return rec.get("role") if rec.get("role") in ("baseline", "xstilts") else None


def device_matches(rec: dict, device: str) -> bool:
    """`device`: cpu, cuda, gpu, or part of the GPU's name (h100, l4, ...)."""
    dev = str(rec.get("device", "cpu")).lower()
    names = {dev}
    if dev.startswith("cuda"):
        names |= {"gpu", str(((rec.get("host") or {}).get("gpu") or {}).get("name", "")).lower()}
    return any(device.lower() in n for n in names if n)


def load(paths, baseline: str = "baseline", xstilts: str = "xstilts", model: str | None = None,
         device: str | None = None) -> Tables:
    """Valid records of `paths`, grouped by model family; what cannot be used goes to `skipped`."""
    recs, skipped = records.read(paths)
    t = Tables(skipped=skipped, records=recs)
    # a record without base_model joins the family its model name has elsewhere, when unambiguous
    fam_of: dict[str, set] = {}
    devs: set = set()
    for r in recs:
        if r.get("base_model"):
            fam_of.setdefault(r["model"], set()).add(r["base_model"])
    for r in recs:   # later records win: re-running a measurement replaces it
        if r["kind"] not in ("eval", "bench"):
            continue   # sensitivity records: the calibration section reads them from t.records
        where = f"{r['kind']} record {r['model']}/{r['variant']}" + (
            f" {r['task']}/{r['lang']}" if r["kind"] == "eval" else f" batch {r['batch']} {shape_key(r)}")
        fam = r.get("base_model")
        if not fam:
            known = fam_of.get(r["model"], set())
            if len(known) > 1:
                t.skipped.append(records.Skipped(where, f"no base_model, and model {r['model']!r} appears with "
                                                        f"several ({', '.join(sorted(known))})"))
                continue
            fam = next(iter(known)) if known else "(unnamed model)"
        if model is not None and fam != model:
            continue
        if r.get("params"):
            t.sizes.setdefault(fam, {"params": r["params"], "non_embedding_params": r.get("non_embedding_params")})
        if r["kind"] == "eval":
            role = _role(r, baseline, xstilts)
            if role is None:
                t.skipped.append(records.Skipped(where, f"model {r['model']!r} is neither the baseline "
                                                        f"({baseline!r}) nor X-STILTs ({xstilts!r}) and the record "
                                                        f"has no role; pass --baseline/--xstilts"))
                continue
            t.evals[(fam, role, r["variant"], r["task"], r["lang"])] = r
        else:
            key = (fam, r["variant"], r["batch"], shape_key(r))
            if device is not None and not device_matches(r, device):
                continue
            if _role(r, baseline, xstilts) == "baseline" and key in t.bench:
                continue   # cost is the architecture's; prefer the X-STILTs measurement
            if key in t.bench and t.bench[key].get("device") != r.get("device"):
                devs.add(f"{r['variant']} ({t.bench[key].get('device')}, {r.get('device')})")
            t.bench[key] = r
    if model is not None and not t.evals and not t.bench:
        fams = sorted({r.get("base_model") or "(unnamed model)" for r in recs})
        raise XoptError(f"--model {model}: no records of that model; models in the records: {', '.join(fams)}")
    if not t.evals and not t.bench:
        first = f" ({len(t.skipped)} skipped; first: {t.skipped[0].where}: {t.skipped[0].why})" if t.skipped else ""
        raise XoptError(f"no usable records in {', '.join(map(str, paths))}{first}")
    if devs:
        t.notes.append(f"bench records of one variant on several devices: {', '.join(sorted(devs))}; the last "
                       f"one is shown; pass --device to choose")
    if len(t.families) > 1:
        t.notes.append(f"records of {len(t.families)} models ({', '.join(t.families)}): each model's tables are "
                       f"separate, the size and Pareto sections compare them; pass --model NAME for one model only")
    return t


# ------------------------------------------------------------------ statistics

class Outcomes:
    """The per-example outcomes of one eval record, resampleable (see the module doc)."""

    def __init__(self, rec: dict):
        self.counts = None
        counts = rec.get("counts", rec.get("outcome_counts"))
        if counts is not None:
            self.counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
            if rec.get("n_units", 0) > len(self.counts):      # only the units with non-zero counts were kept
                self.counts = np.vstack([self.counts, np.zeros((rec["n_units"] - len(self.counts), 3))])
            self.n = len(self.counts)
        elif rec.get("outcomes") is not None:
            self.values = np.asarray(rec["outcomes"], dtype=np.float64)
            self.n = len(self.values)
        else:
            raise ValueError("no per-example outcomes")
        ids = rec.get("example_ids")
        self.ids = ids if ids is None or isinstance(ids, str) else str(zlib.crc32(repr(ids).encode()))

    @staticmethod
    def f1(c: np.ndarray) -> np.ndarray:
        tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
        den = 2 * tp + fp + fn
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0) * 100

    def score(self) -> float:
        """The score (0-100)."""
        return self.from_sums(self.columns().sum(0))

    def columns(self) -> np.ndarray:
        """[n, k]: what a replicate sums over its resampled examples."""
        return self.counts if self.counts is not None else self.values[:, None]

    def from_sums(self, sums: np.ndarray):
        """Score(s) from summed columns ([k] or [B, k]): micro-F1 of counts, or the mean."""
        if self.counts is not None:
            return self.f1(sums)
        return sums[..., 0] / self.n * 100


ROLES = (("x", "xstilts", False), ("b", "baseline", False), ("xr", "xstilts", True), ("br", "baseline", True))


def lang_replicates(t: Tables, family: str, task: str, lang: str, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """{(role, variant): (score, bootstrap replicates or None)} for every record of one language.
    One resampling of the examples serves every record (paired across checkpoints and
    variants); a record is resampled when it has the example set most records share."""
    key = ("reps", family, task, lang, n_boot, seed)
    if key in t._cache:
        return t._cache[key]
    recs = {(k[1], k[2]): r for k, r in t.evals.items() if k[0] == family and k[3] == task and k[4] == lang}
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
        rng = np.random.default_rng([seed, zlib.crc32(f"{family}/{task}/{lang}".encode())])
        idx = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
        # how often each example is drawn in each replicate: replicates become one matrix product per record
        w = np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
        del idx
        paired = [(k, o) for k, o in outs.items() if (o.n, o.ids) == (n, ids)]
        cols = [o.columns() for _, o in paired]
        sums = w @ np.concatenate(cols, axis=1)      # one product for every record of the language
        at = 0
        for (k, o), c in zip(paired, cols):
            res[k] = (float(o.score()), o.from_sums(sums[:, at:at + c.shape[1]]))
            at += c.shape[1]
    t._cache[key] = res
    return res


def lang_scores(t: Tables, family: str, task: str, lang: str, variant: str, reference: str,
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


def _ci(a: np.ndarray) -> tuple[float, float]:
    a = a[np.isfinite(a)]
    return tuple(float(x) for x in np.percentile(a, [2.5, 97.5])) if len(a) else (math.nan, math.nan)


def gain_stats(t: Tables, task: str, variant: str, reference: str = "fp32", langs=None, family: str | None = None,
               n_boot: int = 1000, seed: int = 0) -> dict | None:
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
            st["retention_ci"] = _ci(g / gr)
        st["gain_ci"], st["ref_gain_ci"] = _ci(g), _ci(gr)
    lo, hi = st["retention_ci"]
    glo, ghi = st["ref_gain_ci"]
    st["retention_uncertain"] = bool(not has_ci or ref_gain <= 0 or glo <= 0 <= ghi or not (hi - lo < 1))
    return st


def worst_language(t: Tables, task: str, variant: str, reference: str = "fp32",
                   family: str | None = None) -> tuple[str, float] | None:
    """The zero-shot language whose X-STILTs score drops most from the reference."""
    family = family or t.family
    drops = []
    for lang in t.langs(task, family):
        a, r = t.ev(family, "xstilts", variant, task, lang), t.ev(family, "xstilts", reference, task, lang)
        if a and r and lang != "en":
            drops.append((a["value"] - r["value"], lang))
    return (min(drops)[1], min(drops)[0]) if drops and min(drops)[0] < 0 else None


def fmt_ci(x: float | None, ci, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    if ci is None or not all(np.isfinite(ci)):
        return f"{x:.{digits}f}"
    return f"{x:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def fmt_retention(st: dict, reference: str = "fp32", short: bool = False) -> str:
    if st["ref_gain"] <= 0:
        return "n/a: no gain" if short else f"n/a: no {reference} gain ({st['ref_gain']:+.1f})"
    s = fmt_ci(st["retention"], st["retention_ci"])
    return s + (" ⚠ gain too small" if st["retention_uncertain"] and st["has_ci"] else
                " (no per-example outcomes)" if not st["has_ci"] else "")


def default_shape(t: Tables, family: str, batch: int = 1) -> str | None:
    shapes = [s for b, s in t.shapes(family) if b == batch]
    return "s128" if "s128" in shapes else (shapes[0] if shapes else None)


def summary_rows(t: Tables, reference="fp32", batch=1, shape: str | None = None,
                 family: str | None = None) -> list[dict]:
    """One row per variant of `family`: per task score/gain/retention/worst language, and cost
    (absent keys = not measured)."""
    family = family or t.family
    shape = shape or default_shape(t, family, batch)
    rows = []
    ref_bench = t.bench.get((family, reference, batch, shape))
    for v in t.variants(family):
        row = {"family": family, "variant": v, "tasks": {}, "batch": batch, "shape": shape}
        for task in t.tasks(family):
            st = gain_stats(t, task, v, reference, family=family)
            if st:
                st["worst"] = worst_language(t, task, v, reference, family) if v != reference else None
                row["tasks"][task] = st
        b = t.bench.get((family, v, batch, shape))
        if b:
            row["p50_ms"], row["p99_ms"] = b["p50_ms"], b["p99_ms"]
            row["throughput_seq_s"] = b["throughput_seq_s"]
            row["peak_mem_mb"] = b.get("peak_mem_mb")
            row["speedup"] = ref_bench["p50_ms"] / b["p50_ms"] if ref_bench else None
            row["round_p50_ms"] = b.get("round_p50_ms")
        rets = [st["retention"] for st in row["tasks"].values() if st["ref_gain"] > 0 and np.isfinite(st["retention"])]
        row["avg_retention"] = float(np.mean(rets)) if rets else None
        scores = [st["score"] for st in row["tasks"].values()]
        row["avg_score"] = float(np.mean(scores)) if scores else None
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
    shape = next((r["shape"] for r in rows if r.get("shape")), None)
    t.add_column(f"p50 ms\nb{rows[0]['batch'] if rows else 1} {shape or ''}", justify="right")
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
            cells += [f"{st['score']:.1f}", ret, f"{w[0]} {w[1]:+.1f}" if w else "ref" if r["variant"] == reference
                      else "no drop"]
        cells += [_cost(r, "p50_ms", "{:.1f}"), f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"]
        t.add_row(*cells)
    return t


# ------------------------------------------------------------------ document: one model, two renderings

class Doc:
    """Headings, paragraphs, tables and images, rendered to Markdown and to one HTML file.
    A table cell is a string, or (string, "worst") to highlight it."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list]):
        self.blocks.append(("table", header, rows))

    def img(self, name: str, alt: str):
        self.blocks.append(("img", name, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "table":
                cell = lambda c: (f"**{c[0]}**" if isinstance(c, tuple) else c).replace("|", "\\|")  # noqa: E731
                out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]] + [""]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
        return "\n".join(out)

    def html(self, image_dir: Path, title: str = "xopt report") -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
               "<style>body{font-family:sans-serif;margin:1.5em;background:#fff;color:#111}"
               "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:2px 6px;"
               "font-size:13px;text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
               "th{background:#eef}td.worst{background:#fdd;font-weight:bold}img{max-width:100%}</style>",
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                rows = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>"]
                for r in b[2]:
                    rows.append("<tr>" + "".join(f'<td class="worst">{e(c[0])}</td>' if isinstance(c, tuple)
                                                 else f"<td>{e(c)}</td>" for c in r) + "</tr>")
                out.append("<table>" + "".join(rows) + "</table>")
            elif b[0] == "img":
                data = base64.b64encode((image_dir / b[1]).read_bytes()).decode()
                out.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{e(b[2])}</figcaption></figure>")
        return "\n".join(out + ["</body></html>", ""])


# ------------------------------------------------------------------ sections

def _cost(r: dict | None, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(r[key]) if r and r.get(key) is not None else "not measured"


def _summary_section(doc: Doc, t: Tables, fam: str, reference: str):
    tasks = t.tasks(fam)
    rows = summary_rows(t, reference, family=fam)
    shape = rows[0]["shape"] if rows else None
    header = ["variant"]
    for task in tasks:
        header += [f"{task} score", f"{task} gain", f"{task} retention", f"{task} worst lang"]
    header += [f"p50 ms (b1 {shape_label(shape) if shape else ''})", f"speed-up vs {reference}"]
    body = []
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
        cells += [_cost(r, "p50_ms"), f"{r['speedup']:.2f}x" if r.get("speedup") else "n/a"]
        body.append(cells)
    doc.table(header, body)
    return rows


def _task_section(doc: Doc, t: Tables, fam: str, task: str, reference: str):
    langs = t.langs(task, fam)
    variants = [v for v in t.variants(fam) if v != reference]
    worst = {v: (w[0] if (w := worst_language(t, task, v, reference, fam)) else None) for v in variants}
    doc.h(3, f"{task}: per language")
    doc.p(f"Scores of {reference}: baseline, X-STILTs and the gain (95% CI); for each variant its gain and "
          f"retention (= gain / {reference} gain). The language whose X-STILTs score drops most from "
          f"{reference} is highlighted per variant. Resource class: Joshi et al. 2020.")
    header = ["lang", "class", "script", "n", f"baseline ({reference})", f"X-STILTs ({reference})",
              f"gain ({reference})"]
    for v in variants:
        header += [f"{v} gain", f"{v} retention"]
    rows = []
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
            cells += [(g, "worst") if worst[v] == lang else g, ret]
        rows.append(cells)
    doc.table(header, rows)
    zs = [la for la in langs if la != "en"]
    groups = lang_groups(zs)
    if groups:
        doc.p("Language groups (zero-shot languages; averages of per-language scores, intervals from the "
              "same bootstrap).")
        header = ["group", "languages", f"gain ({reference})"] + [f"{v} retention" for v in variants]
        grows = []
        for name, members in groups:
            ref = gain_stats(t, task, reference, reference, langs=members, family=fam)
            cells = [name, " ".join(members), fmt_ci(ref["gain"], ref["gain_ci"], 1) if ref else "n/a"]
            for v in variants:
                st = gain_stats(t, task, v, reference, langs=members, family=fam)
                cells.append(fmt_retention(st, reference, short=True) if st else "n/a")
            grows.append(cells)
        doc.table(header, grows)


def _reference_section(doc: Doc, t: Tables, fam: str, reference: str):
    rows = []
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
        rows.append([task, metric, f"{pb:.1f}", f"{px:.1f}", f"{px - pb:+.1f}",
                     f"{ob:.1f}" if ours else "n/a", f"{ox:.1f}" if ours else "n/a",
                     f"{ox - ob:+.1f}" if ours else "n/a", str(len(ours))])
    if rows:
        doc.h(3, "X-STILTs paper reference (XLM-R large, test)")
        doc.p("Phang et al. 2020, averages over each task's languages; ours: averages of the record values over "
              "every language evaluated (en included). Check that our fp32 reproduction is close before trusting "
              "retention figures.")
        doc.table(["task", "metric", "paper baseline", "paper X-STILTs", "paper gain", f"our baseline ({reference})",
                   f"our X-STILTs ({reference})", "our gain", "languages"], rows)


def _cost_section(doc: Doc, t: Tables, fam: str):
    doc.h(3, "Cost")
    doc.p("Interleaved rounds; `rounds` lists each round's p50 (drift of a shared machine). "
          "Variants with evaluation records but no benchmark are listed as not measured.")
    rows = []
    for (f, v, b, s), r in sorted(t.bench.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
        if f != fam:
            continue
        rows.append([v, str(b), shape_label(s), r.get("device", "?"), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                     " ".join(f"{x:.1f}" for x in r.get("round_p50_ms", [])), f"{r['throughput_seq_s']:.1f}",
                     f"{r['throughput_tok_s']:.0f}", _cost(r, "peak_mem_mb", "{:.0f}"),
                     _cost(r, "artefact_mb", "{:.0f}")])
    measured = {k[1] for k in t.bench if k[0] == fam}
    for v in t.variants(fam):
        if v not in measured:
            rows.append([v] + ["not measured"] * 10)
    doc.table(["variant", "batch", "shape", "device", "p50 ms", "p99 ms", "rounds", "seq/s", "tok/s", "peak MB",
               "artefact MB"], rows)


def _size_section(doc: Doc, t: Tables, all_rows: dict, reference: str, images: list):
    fams = [f for f in t.families if f in t.sizes]
    if not fams:
        return
    doc.h(2, "Models of different sizes")
    doc.p("Average retention over tasks with a positive fp32 gain; score = average X-STILTs score over tasks.")
    variants = sorted({r["variant"] for f in fams for r in all_rows[f]})
    rows = []
    for f in sorted(fams, key=lambda f: t.sizes[f]["params"]):
        sz = t.sizes[f]
        by_v = {r["variant"]: r for r in all_rows[f]}
        rows.append([f, f"{sz['params'] / 1e6:.1f}M",
                     f"{sz['non_embedding_params'] / 1e6:.1f}M" if sz.get("non_embedding_params") else "n/a"] +
                    [f"{by_v[v]['avg_retention']:.2f}" if v in by_v and by_v[v]["avg_retention"] is not None
                     else "n/a" for v in variants])
    doc.table(["model", "parameters", "non-embedding parameters"] + [f"{v} retention" for v in variants], rows)
    if "retention_vs_size.png" in images:
        doc.img("retention_vs_size.png", "retention vs model size per variant")


def _tokens_section(doc: Doc, t: Tables, images: list):
    rows = _per_language_cost(t)
    if not rows:
        return
    doc.h(2, "Cost per language")
    doc.p("Tokens per sentence differ by language (tokenizer); `measured p50` comes from benchmarks on each "
          "language's length mix, `implied p50` interpolates fixed-length benchmarks at the mean token count.")
    doc.table(["model", "variant", "batch", "lang", "mean tokens", "measured p50 ms", "implied p50 ms"],
              [[r["family"], r["variant"], str(r["batch"]), r["lang"], f"{r['mean_tokens']:.1f}",
                _cost(r, "measured_ms"), _cost(r, "implied_ms")] for r in rows])
    if "tokens_per_language.png" in images:
        doc.img("tokens_per_language.png", "tokens per sentence and latency per language")


def _length_dist(r: dict) -> dict:
    """`length_dist` is a source string ("demo:de", see xopt.records); older records held a dict."""
    ld = r.get("length_dist") or {}
    return ld if isinstance(ld, dict) else {"source": ld}


def _bench_lang(r: dict) -> str | None:
    ld = _length_dist(r)
    lang = r.get("lang") or ld.get("lang")
    if not lang and str(ld.get("source", "")).startswith("demo:"):
        lang = ld["source"].split(":", 1)[1]
    return lang


def _per_language_cost(t: Tables) -> list[dict]:
    out = []
    for (fam, v, b, s), r in t.bench.items():
        lang = _bench_lang(r)
        if not lang or not r.get("length_dist"):
            continue
        mean_tok = r.get("mean_tokens") or _length_dist(r).get("mean_tokens")
        if mean_tok is None:
            continue
        fixed = sorted((int(k[3][1:]), rr["p50_ms"]) for k, rr in t.bench.items()
                       if k[:3] == (fam, v, b) and k[3].startswith("s"))
        implied = (float(np.interp(mean_tok, [x for x, _ in fixed], [y for _, y in fixed]))
                   if len(fixed) >= 2 else None)
        out.append({"family": fam, "variant": v, "batch": b, "lang": lang, "mean_tokens": float(mean_tok),
                    "measured_ms": r["p50_ms"], "implied_ms": implied})
    return sorted(out, key=lambda r: (r["family"], r["variant"], r["batch"], r["lang"]))


# ------------------------------------------------------------------ plots

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (lower x and higher y are better), by x."""
    idx = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def _plots(t: Tables, all_rows: dict, out: Path, reference: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    multi = len(t.families) > 1
    label = (lambda f, v: f"{f}/{v}") if multi else (lambda f, v: v)  # noqa: E731
    # 1. Pareto: average retention / score vs p50, p99, throughput, one figure per batch size
    for batch in sorted({k[2] for k in t.bench}):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), squeeze=False)
        drew = False
        shapes = ", ".join(shape_label(s) for s in sorted({default_shape(t, f, batch) for f in t.families} - {None}))
        for col, (key, xlabel, better_low) in enumerate((("p50_ms", "p50 latency (ms)", True),
                                                         ("p99_ms", "p99 latency (ms)", True),
                                                         ("throughput_seq_s", "sequences/s", False))):
            for row, (ykey, ylabel) in enumerate((("avg_retention", f"avg gain retention vs {reference}"),
                                                  ("avg_score", "avg X-STILTs score"))):
                ax = axes[row][col]
                pts, names = [], []
                for fam in t.families:
                    shape = default_shape(t, fam, batch)
                    for r in all_rows[fam]:
                        b = t.bench.get((fam, r["variant"], batch, shape))
                        if b and r[ykey] is not None:
                            pts.append((b[key], r[ykey]))
                            names.append(label(fam, r["variant"]))
                if not pts:
                    ax.set_visible(False)
                    continue
                drew = True
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, color="tab:blue")
                for x, y, n in zip(xs, ys, names):
                    ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                front = sorted(pareto_front([(x if better_low else -x, y) for x, y in pts]), key=lambda i: xs[i])
                # the staircase bounding what is attainable: right then up for latency, up then right for
                # throughput
                ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:red", lw=1, ls="--",
                        drawstyle="steps-post" if better_low else "steps-pre", label="Pareto front")
                ax.margins(0.1)
                if ykey == "avg_retention":
                    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
                ax.set_xlabel(f"{xlabel}, batch {batch}, {shapes}")
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=7, loc="lower right")
        if drew:
            fig.suptitle(f"Pareto fronts, batch {batch} (latency: lower is better; sequences/s: higher is better)")
            fig.tight_layout()
            name = f"pareto_b{batch}.png"
            fig.savefig(out / name, dpi=90)
            files.append(name)
        plt.close(fig)
    # 2. variant x language heat map of X-STILTs score change vs the reference
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
            fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(langs) + 2), 0.45 * len(variants) + 1.5))
            im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(len(langs)), langs, fontsize=7, rotation=90)
            ax.set_yticks(range(len(variants)), variants, fontsize=8)
            ax.set_title(f"{label(fam, task)}: X-STILTs score change vs {reference}, points")
            fig.colorbar(im, ax=ax, fraction=0.03)
            fig.tight_layout()
            name = "heatmap_" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{fam}_{task}" if multi else task) + ".png"
            fig.savefig(out / name, dpi=90)
            plt.close(fig)
            files.append(name)
    # 3. retention vs model size, per variant
    fams = [f for f in t.families if f in t.sizes]
    series = {v: sorted((t.sizes[f]["params"], r["avg_retention"]) for f in fams for r in all_rows[f]
                        if r["variant"] == v and r["avg_retention"] is not None)
              for v in sorted({r["variant"] for f in fams for r in all_rows[f]})}
    if any(series.values()):
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
        files.append("retention_vs_size.png")
    # 4. tokens per sentence per language and the latency they imply
    per_lang = _per_language_cost(t)
    if per_lang:
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
        a2.set_ylabel("p50 latency (ms) on the language's length mix")
        a2.tick_params(axis="x", rotation=90, labelsize=7)
        a2.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "tokens_per_language.png", dpi=90)
        plt.close(fig)
        files.append("tokens_per_language.png")
    return files


def calibration_section(doc: "Doc", recs: list[dict], reference: str = "fp32", out: Path | None = None,
                        n_boot: int = 1000, seed: int = 0) -> None:
    """The report's calibration section (nothing when the records hold none). Self-contained:
    takes raw records (xopt.records.read), so several calibrations of one variant stay apart.

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
        return

    def label(c: dict) -> str:
        langs = c.get("langs") or []
        where = "en" if langs == ["en"] else (",".join(langs) if len(langs) <= 4 else f"{len(langs)} langs")
        kept = f", {len(c['keep'])} kept" if c.get("keep") else ""
        return f"{c.get('method')} / {where} / {c.get('samples')}{kept}"

    ref = {(r["model"], r["task"], r["lang"]): r for r in evals if r["variant"] == reference}
    groups: dict[tuple, dict] = {}
    for r in cal:
        groups.setdefault((r["model"], r["variant"], label(r["calibration"])), {})[(r["task"], r["lang"])] = r
    doc.h(2, "Calibration")
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
        doc.p(f"Score change vs {reference} (points), zero-shot languages.")
        doc.table(["model", "variant", "calibration", "task", "langs", "avg change", "worst lang (change)"], rows)
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
                doc.h(3, f"{model} {variant}, {task}: en-only ({lab}) vs multilingual ({lab2}) calibration")
                doc.table(["lang", reference, "en-only", "multilingual", "multi - en [95% CI]"], body)
                doc.p(f"Mean difference {np.mean([d for d, _ in diffs]):+.2f} points over {len(diffs)} languages; "
                      f"largest gains: {top}. `*`: interval excludes 0.")
    if sens:
        doc.h(3, "Per-layer sensitivity (quantised alone; drop of 100 x cosine to full precision, held-out "
                 "multilingual sample)")
        by_run: dict[tuple, list] = {}
        for r in sens:
            by_run.setdefault((r["model"], r["variant"], label(r["calibration"])), []).append(r)
        for (model, variant, lab), rs in by_run.items():
            rs = sorted(rs, key=lambda r: r["rank"])
            doc.p(f"{model} {variant}, {lab}:")
            doc.table(["rank", "unit", "drop", "kept"], [[str(r["rank"]), r["unit"], f"{r['drop']:.3g}",
                                                         "yes" if r.get("kept") else ""] for r in rs[:20]])
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
                doc.img(name, f"sensitivity of {model} {variant}")



# ------------------------------------------------------------------ the report

def build(t: Tables, out: Path, reference: str = "fp32") -> Doc:
    """The report's document; PNGs are written into `out`."""
    all_rows = {fam: summary_rows(t, reference, family=fam) for fam in t.families}
    images = _plots(t, all_rows, out, reference)
    doc = Doc()
    doc.h(1, "xopt report")
    doc.p(f"Gain = score(X-STILTs) - score(baseline) on the same variant; retention = gain / gain on {reference}. "
          f"Averages over zero-shot languages (all but en); 95% paired bootstrap intervals over examples. "
          f"Retention is flagged when the {reference} gain's interval contains zero or the retention interval is "
          f"wider than 1.")
    doc.ul(t.notes)
    for fam in t.families:
        doc.h(2, f"Model: {fam}" + (f" ({t.sizes[fam]['params'] / 1e6:.1f}M parameters)" if fam in t.sizes else ""))
        if is_xlmr_large(fam):
            _reference_section(doc, t, fam, reference)
        if t.tasks(fam):
            _summary_section(doc, t, fam, reference)
        for task in t.tasks(fam):
            _task_section(doc, t, fam, task, reference)
        _cost_section(doc, t, fam)
        for name in images:
            if name.startswith("heatmap_") and (len(t.families) == 1 or name.startswith(
                    "heatmap_" + re.sub(r"[^A-Za-z0-9_.-]", "_", fam) + "_")):
                doc.img(name, f"{name[8:-4]}: score change vs {reference} per variant and language")
    pareto = [n for n in images if n.startswith("pareto_")]
    if pareto:
        doc.h(2, "Pareto fronts" + (" across all model x variant pairs" if len(t.families) > 1 else ""))
        doc.p("Each point is one variant (of one model) at one batch size; the dashed line joins the points no "
              "other point beats on both axes.")
        for name in pareto:
            doc.img(name, f"retention and score vs latency and throughput, batch {name[8:-4]}")
    _size_section(doc, t, all_rows, reference, images)
    _tokens_section(doc, t, images)
    calibration_section(doc, t.records, reference, out)
    if t.skipped:
        doc.h(2, "Skipped records")
        doc.ul([f"{s.where}: {s.why}" for s in t.skipped])
    return doc


def write(t: Tables, out: Path, reference: str = "fp32", force: bool = False) -> Path:
    """report.md, report.html (images embedded) and the PNGs in `out`, written atomically."""
    from xopt.manifest import atomic_dir

    with atomic_dir(Path(out), force=force) as tmp:
        doc = build(t, tmp, reference)
        (tmp / "report.md").write_text(doc.markdown(), encoding="utf-8")
        (tmp / "report.html").write_text(doc.html(tmp), encoding="utf-8")
    return Path(out) / "report.md"


def write_report(paths, out: Path, reference="fp32", baseline="baseline", xstilts="xstilts",
                 force: bool = False, model: str | None = None) -> Path:
    return write(load(paths, baseline, xstilts, model), out, reference, force)

"""The record index: the valid eval and bench records of result files, keyed by typed join keys.

Models: records are grouped by `base_model` (the encoder: "family"); within a family the
baseline and X-STILTs checkpoints are told apart by model name (--baseline/--xstilts) or by
the record's `role`. Sizes (`params`, `non_embedding_params`) come from the records.

Join semantics: an eval record is identified by (family, role, variant, task, lang) and a
bench record by (family, variant, batch, shape); a later record with the same key replaces an
earlier one (re-running a measurement replaces it), except that a baseline bench record never
replaces another one (cost is the architecture's: the X-STILTs measurement is preferred).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xopt import records
from xopt.records import shape_key
from xopt.errors import XoptError


@dataclass(frozen=True)
class EvalKey:
    family: str
    role: str        # "baseline" | "xstilts"
    variant: str
    task: str
    lang: str


@dataclass(frozen=True)
class BenchKey:
    family: str
    variant: str
    batch: int
    shape: str       # shape_key(record): s128, len:demo:de, offline/s128, ...


def shape_label(shape: str) -> str:
    return f"seq {shape[1:]}" if shape.startswith("s") else f"lengths {shape[4:]}"


@dataclass
class RecordIndex:
    evals: dict[EvalKey, dict] = field(default_factory=dict)
    bench: dict[BenchKey, dict] = field(default_factory=dict)
    skipped: list = field(default_factory=list)   # records.Skipped
    notes: list = field(default_factory=list)     # things a reader must know (mixed models, ...)
    sizes: dict = field(default_factory=dict)     # family -> {"params": .., "non_embedding_params": ..}
    records: list = field(default_factory=list)   # every valid record (hooks such as calibration)
    cache: dict = field(default_factory=dict, repr=False)   # bootstrap replicates, see retention.py

    @property
    def families(self) -> list[str]:
        """Model families in the order their first record appears."""
        order = {}
        for k in list(self.evals) + list(self.bench):
            order.setdefault(k.family, len(order))
        return sorted(order, key=order.get)

    @property
    def family(self) -> str:
        return self.families[0] if self.families else "?"

    def tasks(self, family: str | None = None) -> list[str]:
        return sorted({k.task for k in self.evals if family in (None, k.family)})

    def variants(self, family: str | None = None) -> list[str]:
        """Variants in the order their first eval, then bench, record appears."""
        order = {}
        for k in list(self.evals) + list(self.bench):
            if family in (None, k.family):
                order.setdefault(k.variant, len(order))
        return sorted(order, key=order.get)

    def langs(self, task: str, family: str | None = None) -> list[str]:
        return sorted({k.lang for k in self.evals if k.task == task and k.lang != "avg" and family in (None, k.family)})

    def ev(self, family, role, variant, task, lang) -> dict | None:
        return self.evals.get(EvalKey(family, role, variant, task, lang))

    def bn(self, family, variant, batch, shape) -> dict | None:
        return self.bench.get(BenchKey(family, variant, batch, shape))

    def shapes(self, family: str | None = None) -> list[tuple[int, str]]:
        return sorted({(k.batch, k.shape) for k in self.bench if family in (None, k.family)})


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
         device: str | None = None) -> RecordIndex:
    """Valid records of `paths`, grouped by model family; what cannot be used goes to `skipped`."""
    recs, skipped = records.read(paths)
    t = RecordIndex(skipped=skipped, records=recs)
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
            t.evals[EvalKey(fam, role, r["variant"], r["task"], r["lang"])] = r
        else:
            key = BenchKey(fam, r["variant"], r["batch"], shape_key(r))
            if device is not None and not device_matches(r, device):
                continue
            if _role(r, baseline, xstilts) == "baseline" and key in t.bench:
                continue   # cost is the architecture's; prefer the X-STILTs measurement
            if key in t.bench and t.bench[key].get("device") != r.get("device"):
                devs.add(f"{r['variant']} ({t.bench[key].get('device')}, {r.get('device')})")
            t.bench[key] = r
    if model is not None and not t.evals and not t.bench:
        fams = sorted({r.get("base_model") or "(unnamed model)" for r in recs})
        raise XoptError(f"--filter-model {model}: no records of that model; models in the records: {', '.join(fams)}")
    if not t.evals and not t.bench:
        first = f" ({len(t.skipped)} skipped; first: {t.skipped[0].where}: {t.skipped[0].why})" if t.skipped else ""
        raise XoptError(f"no usable records in {', '.join(map(str, paths))}{first}")
    if devs:
        t.notes.append(f"bench records of one variant on several devices: {', '.join(sorted(devs))}; the last "
                       f"one is shown; pass --filter-device to choose")
    if len(t.families) > 1:
        t.notes.append(f"records of {len(t.families)} models ({', '.join(t.families)}): each model's tables are "
                       f"separate, the size and Pareto sections compare them; pass --filter-model NAME for one model only")
    return t

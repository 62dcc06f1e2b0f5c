"""The record index: the valid eval and bench records of result files, keyed by typed join keys.

Models: records are grouped by `base_model` (the encoder: "family"); within a family the
baseline and X-STILTs checkpoints are told apart by model name (--baseline/--xstilts) or by
the record's `role`. Sizes (`params`, `non_embedding_params`) come from the records.

Join semantics: an eval record is identified by (family, role, variant, task, lang, split,
suite) and a bench record by (family, variant, batch, shape, host); a later record with the
same key replaces an earlier one (re-running a measurement replaces it), except that a
baseline bench record never replaces another one (cost is the architecture's: the X-STILTs
measurement is preferred).

A retrieval record measured under a stated protocol (records.retrieval_protocol: the layer and
pooling of the embedding) is keyed by it too, and its task is labelled with it
(`task_label`: "tatoeba@L6-mean"), so that two protocols of one task are two tasks to every
table, average and plot, never averaged together; `primary_tasks` keeps one protocol per task
(XTREME's middle layer when present) for averages across tasks. Records without a protocol
(not retrieval, or written before schema 2) keep the bare task name.

Records that differ only in split, suite or host are never merged: scores of one task are
compared across checkpoints, variants and languages, so all of a task's eval records must
come from one suite and one split, and latencies are compared across variants, so all bench
records must come from one host. When the records hold several, `load` refuses with one
line naming two of the values and the option that chooses (`--suite`, `--split`,
`--filter-host`); with the option given, the other records are left out and a note says so.

Host identity (`host_id`): a digest of the record's hardware fields, GPU name and count, CPU
model and thread count. It names the kind of machine, not the machine: two identical nodes
give comparable latencies and their records join; library versions and the OS are left out
so that re-running after an upgrade replaces a measurement rather than splitting it (they stay
in each record's `host`). The records carry no hostname.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from xopt import records
from xopt.comparison import DEFAULT, Comparison
from xopt.records import is_xtreme_protocol, retrieval_protocol, shape_key
from xopt.errors import XoptError


@dataclass(frozen=True)
class EvalKey:
    family: str
    role: str        # "baseline" | "xstilts"
    variant: str
    task: str
    lang: str
    split: str = ""
    suite: str = ""
    protocol: str = ""   # records.retrieval_protocol ("L6-mean"); "" for a record without one


def task_label(rec: dict) -> str:
    """The task name tables show for an eval record: the task, @ its retrieval protocol when it
    states one ("demo-retrieval@L6-mean"), so that two protocols are never taken for one task."""
    proto = retrieval_protocol(rec)
    return f"{rec['task']}@{proto}" if proto else rec["task"]


def split_label(label: str) -> tuple[str, str]:
    """(task, protocol) of a task_label ("" when it has no protocol)."""
    task, _, proto = label.partition("@")
    return task, proto


@dataclass(frozen=True)
class BenchKey:
    family: str
    variant: str
    batch: int
    shape: str       # shape_key(record): s128, len:demo:de, offline/s128, ...
    host: str = ""   # host_id(record)


def _host_fields(rec: dict) -> dict:
    h = rec.get("host") if isinstance(rec.get("host"), dict) else {}
    gpu = h.get("gpu") if isinstance(h.get("gpu"), dict) else {}
    return {"gpu": gpu.get("name"), "gpu_count": gpu.get("count"), "cpu": h.get("cpu"),
            "cpu_count": h.get("cpu_count")}


def host_id(rec: dict) -> str:
    """Short digest of the hardware that produced a record (see the module doc)."""
    blob = json.dumps(_host_fields(rec), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def host_label(rec: dict) -> str:
    """The hardware in words with its digest: `NVIDIA H100 80GB HBM3 + Intel Xeon (2 threads) [1a2b3c4d]`."""
    f = _host_fields(rec)
    cpu = f"{f['cpu'] or 'unknown CPU'} ({f['cpu_count'] or '?'} threads)"
    gpu = f"{f['gpu_count'] or 1}x {f['gpu']} + " if f["gpu"] else ""
    return f"{gpu}{cpu} [{host_id(rec)}]"


def host_matches(rec: dict, host: str) -> bool:
    """`host`: the digest (or its start) or part of the label, case-insensitive."""
    return host.lower() in host_label(rec).lower()


def shape_label(shape: str) -> str:
    """seq 128, lengths demo:de; a LoadGen scenario's shape keeps its prefix: single-stream seq 128."""
    scenario, _, key = shape.partition("/") if shape.startswith(("single-stream/", "offline/", "server/")) \
        else ("", "", shape)
    label = f"seq {key[1:]}" if key.startswith("s") else f"lengths {key[4:]}"
    return f"{scenario} {label}" if scenario else label


class Keyed(dict):
    """Records by full key. A key whose split, suite or host is "" (not given) finds the one
    record whose given fields match: `load` keeps one split and suite per task and one host,
    so a key without them is unambiguous in an index."""

    def _find(self, key):
        if not dataclasses.is_dataclass(key):
            return None
        given = {f.name: getattr(key, f.name) for f in dataclasses.fields(key)}
        if all(v != "" for v in given.values()):
            return None
        given = {n: v for n, v in given.items() if v != ""}
        hits = [k for k in self.keys() if type(k) is type(key) and all(getattr(k, n) == v for n, v in given.items())]
        return hits[0] if len(hits) == 1 else None

    def __missing__(self, key):
        k = self._find(key)
        if k is None:
            raise KeyError(key)
        return dict.__getitem__(self, k)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or self._find(key) is not None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class RecordIndex:
    evals: dict[EvalKey, dict] = field(default_factory=Keyed)
    bench: dict[BenchKey, dict] = field(default_factory=Keyed)
    skipped: list = field(default_factory=list)   # records.Skipped
    notes: list = field(default_factory=list)     # things a reader must know (mixed models, ...)
    sizes: dict = field(default_factory=dict)     # family -> {"params": .., "non_embedding_params": ..}
    records: list = field(default_factory=list)   # every valid record (hooks such as calibration)
    cache: dict = field(default_factory=dict, repr=False)   # bootstrap replicates, see retention.py
    hosts: dict = field(default_factory=dict)     # host_id -> host_label of the bench records
    _ev: dict = field(default_factory=dict, repr=False)     # (family, role, variant, task, lang) -> record
    _bn: dict = field(default_factory=dict, repr=False)     # (family, variant, batch, shape) -> record

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
        """Task labels (task_label): a task measured under two retrieval protocols is two entries."""
        return sorted({k.task for k in self.evals if family in (None, k.family)})

    def primary_tasks(self, family: str | None = None) -> list[str]:
        """One label per task, for averages across tasks: of a task measured under several
        retrieval protocols, XTREME's (the middle layer's mean) when present, else the first."""
        by_task: dict[str, list] = {}
        for label in self.tasks(family):
            by_task.setdefault(split_label(label)[0], []).append(label)
        out = []
        for labels in by_task.values():
            xtreme = [la for la in labels if any(k.task == la and is_xtreme_protocol(r)
                                                 for k, r in self.evals.items() if family in (None, k.family))]
            out.append((xtreme or labels)[0])
        return sorted(out)

    def protocols(self, family: str | None = None) -> dict[str, dict]:
        """{task label: {task, protocol, layer, num_layers, pooling, xtreme}} of the labels that
        carry a retrieval protocol (what a report says about each)."""
        out = {}
        for k, r in self.evals.items():
            if k.protocol and family in (None, k.family) and k.task not in out:
                out[k.task] = {"task": r["task"], "protocol": k.protocol, "layer": r.get("retrieval_layer"),
                               "num_layers": r.get("num_layers"), "pooling": r.get("pooling") or "mean",
                               "xtreme": is_xtreme_protocol(r)}
        return out

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
        """The eval record; one at most, since `load` keeps one split and suite per task."""
        return self._ev.get((family, role, variant, task, lang))

    def bn(self, family, variant, batch, shape) -> dict | None:
        """The bench record; one at most, since `load` keeps one host."""
        return self._bn.get((family, variant, batch, shape))

    def index(self) -> None:
        """Rebuild the lookups of `ev` and `bn` from `evals` and `bench`."""
        self._ev = {(k.family, k.role, k.variant, k.task, k.lang): r for k, r in self.evals.items()}
        self._bn = {(k.family, k.variant, k.batch, k.shape): r for k, r in self.bench.items()}

    def batch_invariance(self, family: str, variant: str) -> dict | None:
        """The `batch_invariance` (xopt.invariance) of the variant's eval records: the X-STILTs
        checkpoint's when it has one (the checkpoint the pick serves), else the baseline's; the
        last record that carries one."""
        found = {}
        for k, r in self.evals.items():
            if k.family == family and k.variant == variant and r.get("batch_invariance"):
                found[k.role] = r["batch_invariance"]
        return found.get("xstilts") or found.get("baseline")

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


def load(paths, comparison: Comparison = DEFAULT, model: str | None = None, device: str | None = None,
         split: str | None = None, suite: str | None = None, host: str | None = None) -> RecordIndex:
    """Valid records of `paths`, grouped by model family; what cannot be used goes to `skipped`.
    `comparison`: the model names of the baseline and X-STILTs checkpoints.
    `split`, `suite`: only eval records of that split / suite; `host`: only bench records of
    that host (host_matches). Records of several splits or suites of one task, or bench
    records of several hosts, are refused unless these choose (see the module doc)."""
    baseline, xstilts = comparison.baseline, comparison.xstilts
    recs, skipped = records.read(paths)
    t = RecordIndex(skipped=skipped, records=recs)
    # a record without base_model joins the family its model name has elsewhere, when unambiguous
    fam_of: dict[str, set] = {}
    devs: set = set()
    left_out = {"split": set(), "suite": set(), "host": set()}
    for r in recs:
        if r.get("base_model"):
            fam_of.setdefault(r["model"], set()).add(r["base_model"])
    for r in recs:   # later records win: re-running a measurement replaces it
        if r["kind"] not in ("eval", "bench"):
            continue   # sensitivity records: the calibration section reads them from t.records
        where = f"{r['kind']} record {r['model']}/{r['variant']}" + (
            f" {task_label(r)}/{r['lang']}" if r["kind"] == "eval" else f" batch {r['batch']} {shape_key(r)}")
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
            if split is not None and r["split"] != split:
                left_out["split"].add(r["split"])
                continue
            if suite is not None and r["suite"] != suite:
                left_out["suite"].add(r["suite"])
                continue
            t.evals[EvalKey(fam, role, r["variant"], task_label(r), r["lang"], r["split"], r["suite"],
                            retrieval_protocol(r) or "")] = r
        else:
            if device is not None and not device_matches(r, device):
                continue
            if host is not None and not host_matches(r, host):
                left_out["host"].add(host_label(r))
                continue
            hid = host_id(r)
            t.hosts.setdefault(hid, host_label(r))
            key = BenchKey(fam, r["variant"], r["batch"], shape_key(r), hid)
            if _role(r, baseline, xstilts) == "baseline" and key in t.bench:
                continue   # cost is the architecture's; prefer the X-STILTs measurement
            if key in t.bench and t.bench[key].get("device") != r.get("device"):
                devs.add(f"{r['variant']} ({t.bench[key].get('device')}, {r.get('device')})")
            t.bench[key] = r
    if model is not None and not t.evals and not t.bench:
        fams = sorted({r.get("base_model") or "(unnamed model)" for r in recs})
        raise XoptError(f"--filter-model {model}: no records of that model; models in the records: {', '.join(fams)}")
    _check_chosen(t, paths, {"split": split, "suite": suite, "host": host}, left_out)
    if devs:
        t.notes.append(f"bench records of one variant on several devices: {', '.join(sorted(devs))}; the last "
                       f"one is shown; pass --filter-device to choose")
    if len(t.families) > 1:
        t.notes.append(f"records of {len(t.families)} models ({', '.join(t.families)}): each model's tables are "
                       f"separate, the size and Pareto sections compare them; pass --filter-model NAME for one model only")
    t.index()
    return t


def _check_chosen(t: RecordIndex, paths, chosen: dict, left_out: dict) -> None:
    """One line when a --split/--suite/--filter-host value matches no record, when records of
    several suites, splits or hosts are mixed, or when nothing usable is left; else a note per
    choice that left records out. `chosen`: {split, suite, host} (None: not chosen);
    `left_out`: the values of the records each choice left out."""
    opts = {"split": ("--split", t.evals), "suite": ("--suite", t.evals), "host": ("--filter-host", t.bench)}
    for what, (opt, have) in opts.items():
        if chosen[what] is not None and not have and left_out[what]:
            raise XoptError(f"{opt} {chosen[what]}: no records of that {what}; the records have: "
                            f"{', '.join(sorted(left_out[what]))}")
    _refuse_mixed(t)
    if not t.evals and not t.bench:
        first = f" ({len(t.skipped)} skipped; first: {t.skipped[0].where}: {t.skipped[0].why})" if t.skipped else ""
        raise XoptError(f"no usable records in {', '.join(map(str, paths))}{first}")
    for what, (opt, _) in opts.items():
        if left_out[what]:
            shown = next(iter(t.hosts.values())) if what == "host" and t.hosts else chosen[what]
            t.notes.append(f"{opt} {chosen[what]}: records of {what} {shown} only; "
                           f"left out: {', '.join(sorted(left_out[what]))}")


def _refuse_mixed(t: RecordIndex) -> None:
    """One line when a task's eval records span several suites or splits, or the bench records
    several hosts: such records are never joined (see the module doc)."""
    seen: dict = {}
    for k in t.evals:
        seen.setdefault((k.family, k.task), {"suite": {}, "split": {}})
        seen[(k.family, k.task)]["suite"].setdefault(k.suite, None)
        seen[(k.family, k.task)]["split"].setdefault(k.split, None)
    for (fam, task), got in seen.items():
        for what in ("suite", "split"):
            vals = list(got[what])
            if len(vals) > 1:
                of = f" of model {fam}" if fam != "(unnamed model)" else ""
                raise XoptError(f"task {task}{of} has eval records of {what} {vals[0]} and {what} {vals[1]}, "
                                f"which are never joined; pass --{what} {vals[0]} or --{what} {vals[1]}")
    if len(t.hosts) > 1:
        (a, la), (b, lb) = list(t.hosts.items())[:2]
        raise XoptError(f"bench records of {len(t.hosts)} hosts: {la} and {lb}; latencies of different machines "
                        f"are never joined; pass --filter-host {a} or --filter-host {b}")

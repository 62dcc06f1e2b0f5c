"""`xopt pick`: the fastest variant that meets the constraints, with the numbers that decided it.

Candidates: every (model, variant) pair of the records (the X-STILTs checkpoint's variants;
with records of several models, pairs of every model compete: a smaller model in fp16 may
beat a larger one in int8). Cost comes from the bench record at the requested batch and
shape (`--seq-len L`, or `--lengths SOURCE` for a real length mix) and scenario (`--scenario`,
default fixed-batch), on `--filter-device` when given.

Constraints: p50/p99 latency, throughput (sequences/s), peak memory, minimum gain retention
(checked on every task whose reference gain is positive: a task where intermediate training
did not help has no gain to retain), minimum per-language retention (checked on the
languages whose reference gain is clearly positive: interval above zero, or point above zero
when the records keep no per-example outcomes), maximum average score drop vs the reference.
A candidate without the measurement a constraint needs fails it as "not measured"; it is
never skipped silently. A bench record of a LoadGen run that LoadGen marked INVALID fails
every candidate it measures. `--max-mem-mb` is refused on records whose peak memory is that
of a process holding several variants (`peak_mem_scope` "shared process"): it is not any
one variant's memory.

Ranking of the feasible: lowest p50, then higher average retention, then higher average
score, then lower peak memory, then name: ties are broken deterministically and reported.

Each candidate's per-task numbers say what the report's tables say (`--json` prints them):
`drop_points` is the reference's score minus the variant's, in points (positive = points lost,
negative = gained); `retention` is null where the tables show n/a, with the reason in
`retention_na` (`xopt.analysis.retention_na`: no reference gain, or one that is not significant).
`avg_retention` averages the tasks that have a retention, null with `avg_retention_na` when none
has; the constraints (`--min-retention`, `--max-drop`) read the same point values.
`batch_invariance` is the eval records' (xopt.invariance); a variant that is not batch invariant
gets a line in `warnings` (printed under the pick), which no constraint reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xopt.analysis import fmt_ci, gain_stats, invariance_text, load, retention_na, shape_label, summary_rows
from xopt.comparison import DEFAULT, Comparison
from xopt.errors import XoptError


@dataclass(frozen=True)
class Budget:
    """The constraints a pick must meet (None: not constrained) and the operating point the cost
    constraints are read at: `batch`, one shape (`seq_len`, default 128, or a `lengths` mix) and
    the bench `scenario` (None: fixed-batch). Retention and drop as in the module doc."""

    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    min_throughput: float | None = None
    min_retention: float | None = None
    min_lang_retention: float | None = None
    max_mem_mb: float | None = None
    max_drop: float | None = None
    batch: int = 1
    seq_len: int | None = None
    lengths: str | None = None
    scenario: str | None = None


def _shape(seq_len: int | None, lengths: str | None, scenario: str | None = None) -> str:
    """The bench shape key (xopt.records.shape_key) of the requested shape and scenario."""
    if seq_len and lengths:
        raise XoptError("pass either --seq-len or --lengths, not both")
    key = f"len:{lengths}" if lengths else f"s{seq_len or 128}"
    return key if scenario in (None, "fixed-batch") else f"{scenario}/{key}"


def _fail(c: dict, text: str, miss: float = 1.0) -> None:
    """Record a failed constraint; `miss` = relative violation (for 'closest'), inf when not measured."""
    c["fails"].append(text)
    c["miss"] += miss


def pick(paths, budget: Budget = Budget(), comparison: Comparison = DEFAULT, device: str | None = None,
         model: str | None = None, split: str | None = None, suite: str | None = None,
         host: str | None = None) -> dict:
    """The fastest candidate of the records of `paths` within `budget`, the runner-up and why it
    lost, or the closest miss; `device`, `model`, `split`, `suite`, `host` choose the records."""
    t = load(paths, comparison, model, device, split=split, suite=suite, host=host)
    shape = _shape(budget.seq_len, budget.lengths, budget.scenario)
    where = f"batch {budget.batch}, {shape_label(shape)}" + (f", device {device}" if device else "")
    cands, shared = [], []
    for fam in t.families:
        rows = {r["variant"]: r for r in summary_rows(t, comparison, budget.batch, shape, family=fam)}
        for v in t.variants(fam):
            b = t.bn(fam, v, budget.batch, shape)
            c = _candidate(t, fam, v, rows[v], b, budget, where, comparison.reference)
            if b is not None and budget.max_mem_mb is not None and b.get("peak_mem_scope") == "shared process":
                shared.append(c["name"])
            cands.append(c)
    if shared:
        names = ", ".join(shared[:3]) + (" ..." if len(shared) > 3 else "")
        raise XoptError(f"--max-mem-mb: the peak memory of {names} was measured in one process holding several "
                        f"variants (peak_mem_scope \"shared process\"), not per variant; bench each variant "
                        f"alone (one variant directory per `xopt bench`) and pick on those records")
    ok = sorted((c for c in cands if not c["fails"]), key=_rank)
    bad = sorted((c for c in cands if c["fails"]), key=lambda c: (len(c["fails"]), c["miss"], _rank(c)))
    bg = budget
    constraints = {k: v for k, v in dict(max_p50_ms=bg.max_p50_ms, max_p99_ms=bg.max_p99_ms, batch=bg.batch,
                                         shape=shape, min_throughput=bg.min_throughput,
                                         min_retention=bg.min_retention, min_lang_retention=bg.min_lang_retention,
                                         max_mem_mb=bg.max_mem_mb, max_drop=bg.max_drop, device=device, model=model,
                                         split=split, suite=suite, host=host).items() if v is not None}
    chosen = ok[0] if ok else None
    runner_up = ok[1] if len(ok) > 1 else (bad[0] if bad else None)
    return {"constraints": constraints, "chosen": chosen, "runner_up": runner_up,
            "why_runner_up_lost": _why(chosen, runner_up) if chosen and runner_up else None,
            "closest": None if ok else (bad[0] if bad else None), "candidates": cands, "skipped": len(t.skipped),
            "hosts": list(t.hosts.values()), "notes": list(t.notes)}


def _candidate(t, fam: str, v: str, row: dict, b: dict | None, budget: Budget, where: str, reference: str) -> dict:
    """One candidate (model `fam`, variant `v`): its cost from bench record `b` (None: no
    record at `where`), its quality from summary row `row`, and the constraints it fails."""
    c = {"model": fam, "variant": v, "name": f"{fam}/{v}" if len(t.families) > 1 else v,
         "p50_ms": b and b["p50_ms"], "p99_ms": b and b["p99_ms"],
         "throughput_seq_s": b and b["throughput_seq_s"], "peak_mem_mb": b and b.get("peak_mem_mb"),
         "avg_retention": None, "avg_retention_na": None, "avg_score": row["avg_score"],
         "fails": [], "miss": 0.0, "tasks": {}, "batch_invariance": row["batch_invariance"],
         "warnings": _warnings(row)}
    nm = f"not measured (no bench record at {where})"
    if b is None:
        _fail(c, f"p50 {nm}", math.inf)
    elif b.get("validity") not in (None, "VALID"):
        _fail(c, f"LoadGen run {b['validity']} ({b.get('invalid_reason') or 'see its log'}): "
                 f"{b.get('loadgen_log_dir') or 'no log directory'}", math.inf)
    for key, limit, unit, low in (("p50_ms", budget.max_p50_ms, "ms", True), ("p99_ms", budget.max_p99_ms, "ms", True),
                                  ("throughput_seq_s", budget.min_throughput, "sequences/s", False),
                                  ("peak_mem_mb", budget.max_mem_mb, "MB", True)):
        if limit is None or (b is None and key == "p50_ms"):
            continue
        label = {"p50_ms": "p50", "p99_ms": "p99", "throughput_seq_s": "throughput", "peak_mem_mb": "peak memory"}[key]
        val = c[key]
        if val is None:
            _fail(c, f"{label} {nm if b is None else 'not measured (the bench record has no ' + key + ')'}", math.inf)
        elif (val > limit) if low else (val < limit):
            _fail(c, f"{label} {val:.2f} {unit} {'>' if low else '<'} {limit} {unit}",
                  abs(val - limit) / max(abs(limit), 1e-9))
    _quality(t, c, fam, v, row, reference, budget)
    _average_retention(c, t.primary_tasks(fam))
    return c


def _warnings(row: dict) -> list[str]:
    """Reasons a candidate may answer otherwise in service than in the records, beside the
    constraints (which they do not fail): a variant whose outputs depend on the batch."""
    bi = row.get("batch_invariance")
    if not bi or bi["invariant"]:
        return []
    return [f"not batch invariant: {invariance_text(bi)}; a server that batches requests (Triton's dynamic "
            f"batching) answers differently from batch 1, and its scores are those of batch {bi['batch']}"]


def json_safe(obj):
    """The choice as strict JSON can hold it: NaN/inf -> null, tuples -> lists, no internal keys."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items() if k != "miss"}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _num(x, worst=math.inf) -> float:
    return worst if x is None else x


def _rank(c: dict):
    return (_num(c["p50_ms"]), -_num(c["avg_retention"], -math.inf), -_num(c["avg_score"], -math.inf),
            _num(c["peak_mem_mb"]), c["name"])


def _quality(t, c, fam, v, row, reference: str, budget: Budget) -> None:
    min_retention, min_lang_retention, max_drop = budget.min_retention, budget.min_lang_retention, budget.max_drop
    need = min_retention is not None or max_drop is not None or min_lang_retention is not None
    if need and not t.tasks(fam):
        _fail(c, "retention not measured (no eval records)", math.inf)
    langs_checked = 0
    for task in t.tasks(fam):
        st = row["tasks"].get(task)
        if st is None:
            if need:
                _fail(c, f"{task}: not evaluated for both checkpoints on {v} and {reference}", math.inf)
            continue
        na = retention_na(st, reference)
        c["tasks"][task] = {"score": st["score"], "ref_score": st["ref_score"], "drop_points": -st["score_drop"],
                            "gain": st["gain"], "ref_gain": st["ref_gain"],
                            "retention": None if na else st["retention"], "retention_ci": None if na else
                            st["retention_ci"], "retention_na": na}
        if min_retention is not None:
            if st["ref_gain"] <= 0:
                c["tasks"][task]["note"] = f"no {reference} gain to retain ({st['ref_gain']:+.1f}); not checked"
            elif st["retention"] < min_retention:
                _fail(c, f"{task}: retention {st['retention']:.2f} < {min_retention}",
                      (min_retention - st["retention"]) / max(min_retention, 1e-9))
        drop = c["tasks"][task]["drop_points"]
        if max_drop is not None and drop > max_drop:
            _fail(c, f"{task}: score drop {drop:.2f} > {max_drop} points", (drop - max_drop) / max(max_drop, 1e-9))
        if min_lang_retention is not None:
            checked = 0
            for lang in st["langs"]:
                ls = gain_stats(t, task, v, reference, langs=[lang], family=fam)
                ref_lo = ls["ref_gain_ci"][0] if ls["has_ci"] else ls["ref_gain"]
                if not ref_lo > 0:
                    continue
                checked += 1
                if ls["retention"] < min_lang_retention:
                    _fail(c, f"{task}/{lang}: retention {ls['retention']:.2f} < {min_lang_retention}",
                          (min_lang_retention - ls["retention"]) / max(min_lang_retention, 1e-9))
            c["tasks"][task]["langs_checked"] = checked
            langs_checked += checked
    if min_lang_retention is not None and c["tasks"] and not langs_checked:
        _fail(c, f"per-language retention not measurable: no language has a clear {reference} gain "
                 f"(interval above 0) in any task; evaluate more examples", math.inf)


def _average_retention(c: dict, primary: list[str]) -> None:
    """`avg_retention` over the primary tasks (one retrieval protocol per task) that have a
    retention; null with the reason when none has (module doc)."""
    tasks = [c["tasks"][k] for k in primary if k in c["tasks"]]
    kept = [st["retention"] for st in tasks if st["retention"] is not None]
    if kept:
        c["avg_retention"] = float(sum(kept) / len(kept))
    else:
        c["avg_retention_na"] = ("no task has a retention: " + "; ".join(sorted({st["retention_na"] for st in tasks}))
                                 if tasks else "no eval records of both checkpoints")


RANK_KEYS = (("p50", "p50_ms", "{:.2f} ms", "slower"), ("average retention", "avg_retention", "{:.3f}", "lower"),
             ("average score", "avg_score", "{:.2f}", "lower"),
             ("peak memory", "peak_mem_mb", "{:.0f} MB", "more memory"))


def _why(c: dict, ru: dict) -> str:
    if ru["fails"]:
        return "; ".join(ru["fails"])
    ra, rb = _rank(c), _rank(ru)
    for i, (what, key, fmt, worse) in enumerate(RANK_KEYS):
        if ra[i] != rb[i]:
            f = lambda x: "n/a" if x is None else fmt.format(x)  # noqa: E731
            tied = f"tied on {', '.join(k[0] for k in RANK_KEYS[:i])}; " if i else ""
            return f"{tied}{worse} {what}: {f(ru[key])} vs {f(c[key])}"
    return "tied on every measure (p50, retention, score, memory); the order of names decided"


def _describe(c: dict) -> str:
    parts = [f"p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, {c['throughput_seq_s']:.1f} seq/s"
             if c["p50_ms"] is not None else "p50 not measured"]
    if c.get("peak_mem_mb"):
        parts.append(f"peak {c['peak_mem_mb']:.0f} MB")
    for task, st in c["tasks"].items():
        ret = (f"retention n/a: {st['retention_na']}" if st["retention_na"] else
               f"retention {fmt_ci(st['retention'], st['retention_ci'])}")
        parts.append(f"{task} score {st['score']:.1f} (drop {st['drop_points']:+.1f} points), {ret}")
    return "; ".join(parts)


def render(choice: dict) -> str:
    cons = ", ".join(f"{k}={v}" for k, v in choice["constraints"].items())
    lines = [f"constraints: {cons}"]
    if choice["chosen"]:
        c = choice["chosen"]
        lines.append(f"pick: {c['name']} ({_describe(c)})")
        lines += [f"  warning: {w}" for w in c.get("warnings", [])]
        ru = choice["runner_up"]
        if ru:
            lines.append(f"runner-up: {ru['name']} lost: {choice['why_runner_up_lost']}")
    else:
        c = choice["closest"]
        lines.append("no variant meets the constraints" +
                     (f"; closest: {c['name']}, which misses: {'; '.join(c['fails'])}" if c else ""))
    if choice.get("hosts"):
        lines.append(f"bench records of host {', '.join(choice['hosts'])}")
    lines += [f"note: {n}" for n in choice.get("notes", [])]
    if choice.get("skipped"):
        lines.append(f"({choice['skipped']} records skipped as invalid; `xopt report` lists them)")
    return "\n".join(lines)

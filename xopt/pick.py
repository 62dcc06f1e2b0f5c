"""`xopt pick`: the fastest variant that meets the constraints, with the numbers that decided it.

Candidates are the variants of the X-STILTs model with a bench record at the requested
batch and shape. Constraints: latency (p50/p99), minimum gain retention (checked on every
task whose reference gain is positive: a task where intermediate training did not help has
no gain to retain, and says so), maximum average score drop vs the reference. A variant
without the measurement a constraint needs fails that constraint as "not measured".
"""

from __future__ import annotations

from xopt import report


def pick(paths, max_p50_ms=None, max_p99_ms=None, batch: int = 1, seq_len: int | None = 128,
         min_retention=None, max_drop=None, reference="fp32", baseline="baseline", xstilts="xstilts") -> dict:
    t = report.load(paths)
    shape = f"s{seq_len}" if seq_len else None
    cands = []
    for v in t.variants():
        b = t.bench.get((xstilts, v, batch, shape)) if shape else None
        c = {"variant": v, "p50_ms": b and b["p50_ms"], "p99_ms": b and b["p99_ms"],
             "throughput_seq_s": b and b["throughput_seq_s"], "fails": [], "tasks": {}}
        if b is None:
            c["fails"].append(f"no bench record at batch {batch}, {shape}")
        if max_p50_ms is not None and b and b["p50_ms"] > max_p50_ms:
            c["fails"].append(f"p50 {b['p50_ms']:.2f} ms > {max_p50_ms} ms")
        if max_p99_ms is not None and b and b["p99_ms"] > max_p99_ms:
            c["fails"].append(f"p99 {b['p99_ms']:.2f} ms > {max_p99_ms} ms")
        for task in t.tasks:
            st = report.gain_stats(t, task, v, reference, baseline, xstilts)
            if st is None:
                if min_retention is not None or max_drop is not None:
                    c["fails"].append(f"{task}: not evaluated for {baseline}/{xstilts} and {reference}")
                continue
            c["tasks"][task] = {k: st[k] for k in ("score", "gain", "retention", "retention_ci", "score_drop")}
            if min_retention is not None and st["ref_gain"] > 0 and st["retention"] < min_retention:
                c["fails"].append(f"{task}: retention {st['retention']:.2f} < {min_retention}")
            if max_drop is not None and -st["score_drop"] > max_drop:
                c["fails"].append(f"{task}: score drop {-st['score_drop']:.2f} > {max_drop} points")
        cands.append(c)
    ok = sorted((c for c in cands if not c["fails"]), key=lambda c: c["p50_ms"])
    bad = sorted((c for c in cands if c["fails"]), key=lambda c: (len(c["fails"]), c["p50_ms"] or 1e18))
    constraints = {k: v for k, v in dict(max_p50_ms=max_p50_ms, max_p99_ms=max_p99_ms, batch=batch, seq_len=seq_len,
                                         min_retention=min_retention, max_drop=max_drop).items() if v is not None}
    return {"constraints": constraints, "chosen": ok[0] if ok else None,
            "runner_up": ok[1] if len(ok) > 1 else (bad[0] if bad else None),
            "closest": None if ok else (bad[0] if bad else None), "candidates": cands}


def _describe(c: dict) -> str:
    parts = [f"p50 {c['p50_ms']:.2f} ms" if c["p50_ms"] else "p50 not measured"]
    for task, st in c["tasks"].items():
        parts.append(f"{task} score {st['score']:.1f} (drop {-st['score_drop']:+.1f}), retention "
                     f"{report.fmt_ci(st['retention'], st['retention_ci'])}")
    return "; ".join(parts)


def render(choice: dict) -> str:
    cons = ", ".join(f"{k}={v}" for k, v in choice["constraints"].items())
    lines = [f"constraints: {cons}"]
    if choice["chosen"]:
        c = choice["chosen"]
        lines.append(f"pick: {c['variant']} ({_describe(c)})")
        ru = choice["runner_up"]
        if ru:
            why = ("; ".join(ru["fails"]) if ru["fails"] else
                   f"slower: p50 {ru['p50_ms']:.2f} ms vs {c['p50_ms']:.2f} ms")
            lines.append(f"runner-up: {ru['variant']} lost because {why}")
    else:
        c = choice["closest"]
        lines.append("no variant meets the constraints" +
                     (f"; closest: {c['variant']}, which misses: {'; '.join(c['fails'])}" if c else ""))
    return "\n".join(lines)

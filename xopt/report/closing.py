"""The closing paragraph in plain words (the demo prints it last and the report carries it), and
what each retrieval protocol label means. Generated from the records only: the summary rows
(xopt.analysis.summary_rows) and a pick (xopt.pick.pick's result).

The paragraph says, in this order:
1. the gain: per task (each retrieval protocol on its own), the reference variant's X-STILTs
   gain over the baseline, averaged over the zero-shot languages, with its 95% interval and
   whether that interval excludes 0, whatever its sign;
2. per variant: how much of each clearly positive gain it keeps (retention with its interval),
   at what speed-up vs the reference and vs the fastest peer (a library's stock recipe, marked
   `peer` in the registry) measured in the same records; where no gain is clearly
   positive, retention is n/a and the variants are compared on score instead;
3. the pick and why (the pick's constraints), or that none meets them.
"""

from __future__ import annotations

import numpy as np

from xopt.analysis import RecordIndex, split_label
from xopt.comparison import DEFAULT
from xopt.tasks.registry import scoring_note
from xopt.variants import REGISTRY


def fastest_peer(rows: list[dict]) -> dict | None:
    """The summary row of the fastest measured peer variant (registry `peer`), or None."""
    peers = [r for r in rows if r.get("p50_ms") and r["variant"] in REGISTRY and REGISTRY[r["variant"]].peer]
    return min(peers, key=lambda r: r["p50_ms"], default=None)


def _embedding(p: dict) -> str:
    n, layer = p["num_layers"], p["layer"]
    of = f" of {n}" if n else ""
    if p["xtreme"]:
        return f"XTREME protocol: {p['pooling']} of layer {layer}{of}"
    if n is not None and layer == n:
        return f"the model's own pooling: {p['pooling']} of the last layer, {layer}{of}"
    return f"{p['pooling']} of layer {layer}{of}"


def protocol_name(label: str, protocols: dict) -> str:
    """A task label in words: "demo-retrieval (XTREME protocol: mean of layer 6 of 12)"."""
    p = protocols.get(label)
    return f"{split_label(label)[0]} ({_embedding(p)})" if p else label


def protocol_notes(t: RecordIndex, family: str | None = None) -> list[str]:
    """One line per retrieval task label: which embedding it scores and how."""
    return [f"{label}: {_embedding(p)}; {scoring_note(p['task'])}" for label, p in sorted(t.protocols(family).items())]


def task_order(t: RecordIndex, family: str | None = None) -> list[str]:
    """Task labels in reading order: tasks without a retrieval protocol first, then XTREME's
    retrieval protocol, then the others."""
    protocols = t.protocols(family)
    return sorted(t.tasks(family), key=lambda la: (la in protocols, not protocols.get(la, {}).get("xtreme"), la))


def _ci(lo: float, hi: float, digits: int = 1) -> str:
    return f"{lo:+.{digits}f}..{hi:+.{digits}f}" if np.isfinite(lo) and np.isfinite(hi) else "no interval"


def _clear(ci) -> int:
    """+1 / -1 when the interval lies above / below 0, 0 when it contains 0 or is missing."""
    lo, hi = ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _speed(row: dict, stock_row: dict | None, reference: str) -> str:
    if not row.get("p50_ms"):
        return "speed not measured"
    parts = [f"{row['speedup']:.2f}x the speed of {reference}" if row.get("speedup") else None]
    if stock_row and row["variant"] != stock_row["variant"]:
        parts.append(f"{stock_row['p50_ms'] / row['p50_ms']:.2f}x {stock_row['variant']}'s")
    return f"p50 {row['p50_ms']:.1f} ms, " + " and ".join(p for p in parts if p)


def closing_paragraph(t: RecordIndex, rows: list[dict], choice: dict | None, reference: str = DEFAULT.reference,
                      family: str | None = None) -> str:
    """The plain-words paragraph (module doc) for one model family's summary `rows`."""
    family = family or t.family
    protocols = t.protocols(family)
    by_v = {r["variant"]: r for r in rows}
    ref = by_v.get(reference)
    if not ref or not ref["tasks"]:
        return (f"No gain to report: the records hold no baseline and X-STILTs scores of the {reference} "
                f"variant on the same tasks.")
    shape = rows[0].get("shape") or "?"
    length = f"{shape.removeprefix('s')} tokens" if shape.startswith("s") else shape
    where = f"batch {rows[0].get('batch', 1)}, {length}"
    gains, clear_pos = [], []
    for label in task_order(t, family):
        st = ref["tasks"].get(label)
        if not st:
            continue
        sign = _clear(st["ref_gain_ci"])
        verdict = {1: "a clear gain", -1: "a clear loss", 0: "not significant: the interval contains 0"}[sign]
        if not st["has_ci"]:
            verdict = "no interval: the records keep no per-example outcomes"
        gains.append(f"{protocol_name(label, protocols)} {st['ref_gain']:+.1f} points "
                     f"({_ci(*st['ref_gain_ci'])}; {verdict})")
        if sign > 0 and label in t.primary_tasks(family):
            clear_pos.append(label)
    n_langs = max(st["n_langs"] for st in ref["tasks"].values())
    text = [f"On {reference}, X-STILTs (intermediate task, then target task) changes the zero-shot score over the "
            f"baseline (mean over {n_langs} languages, 95% bootstrap interval) by: " + "; ".join(gains) + "."]
    stock_row = fastest_peer(rows)
    others = [r for r in rows if r["variant"] != reference]
    if clear_pos:
        kept = []
        for r in others:
            parts = []
            for label in clear_pos:
                st = r["tasks"].get(label)
                if not st or not np.isfinite(st["retention"]):
                    parts.append(f"n/a of the {protocol_name(label, protocols)} gain (not evaluated)")
                    continue
                lo, hi = st["retention_ci"]
                ci = f" ({lo:.2f}..{hi:.2f})" if np.isfinite(lo) and np.isfinite(hi) else ""
                parts.append(f"{st['retention']:.2f}{ci} of the {protocol_name(label, protocols)} gain")
            kept.append(f"{r['variant']} keeps {', '.join(parts)} at {_speed(r, stock_row, reference)}")
        text.append(f"At {where}: " + "; ".join(kept) + ".")
    else:
        drops = []
        for r in others:
            worst = min((st["score_drop"] for st in r["tasks"].values()), default=None)
            score = ("is not evaluated" if worst is None else f"scores at least as well as {reference} on every task"
                     if worst >= 0 else f"scores at most {-worst:.2f} points below {reference} on any task")
            drops.append(f"{r['variant']} {score}, at {_speed(r, stock_row, reference)}")
        text.append(f"No gain is clearly positive (for retrieval: under XTREME's protocol), so how much of it a "
                    f"variant keeps is n/a; the variants are compared on score instead, at {where}: "
                    + "; ".join(drops) + ".")
    text.append(_pick_sentence(choice, by_v, reference, stock_row, clear_pos, protocols))
    return " ".join(text)


def _pick_sentence(choice: dict | None, by_v: dict, reference: str, stock_row: dict | None, clear_pos: list,
                   protocols: dict) -> str:
    if not choice:
        return "No pick was made."
    cons = choice.get("constraints", {})
    budget = (f"scores within {cons['max_drop']:g} point{'s' if cons['max_drop'] != 1 else ''} of {reference} on "
              f"every task" if cons.get("max_drop") is not None else "meets the constraints")
    c = choice.get("chosen")
    if not c:
        close = choice.get("closest")
        return (f"xopt recommends no variant: none {budget}" +
                (f"; the closest, {close['name']}, misses: {'; '.join(close['fails'])}." if close else "."))
    row = by_v.get(c["variant"], {})
    why = f"it is the fastest variant that {budget}"
    kept = [f"{row['tasks'][label]['retention']:.2f} of the {protocol_name(label, protocols)} gain"
            for label in clear_pos if label in row.get("tasks", {})
            and np.isfinite(row["tasks"][label]["retention"])]
    speed = _speed(row, stock_row, reference) if row else "speed not measured"
    faster = [x for x in choice.get("candidates", []) if x["fails"] and x.get("p50_ms") is not None
              and c.get("p50_ms") is not None and x["p50_ms"] < c["p50_ms"]]
    out_of_budget = ("; faster but outside that budget: " +
                     "; ".join(f"{x['name']} ({x['fails'][0]})" for x in faster) if faster else "")
    ru = choice.get("runner_up")
    tail = f" (the runner-up, {ru['name']}, lost: {choice['why_runner_up_lost']})" if ru and not faster else ""
    return (f"xopt recommends {c['name']} ({speed}{', keeping ' + ', '.join(kept) if kept else ''}): "
            f"{why}{tail}{out_of_budget}.")

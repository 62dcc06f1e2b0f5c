"""The report's figures: what the Pareto plot draws as a point."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from test_report_pick import _write, ev  # noqa: E402
from xopt import analysis  # noqa: E402
from xopt.report import plots  # noqa: E402


def _records(tmp_path, int8_right: int = 11):
    """fp32: a clear gain (10 -> 30 of 40 right); int8 goes 10 -> `int8_right` (11: keeps almost none of it)."""
    recs = []
    for lang in ("de", "ja"):
        for v, good in (("fp32", 30), ("int8", int8_right)):
            recs.append(ev("baseline", v, lang, [1] * 10 + [0] * 30))
            recs.append(ev("xstilts", v, lang, [1] * good + [0] * (40 - good)))
    return _write(tmp_path, recs)         # + bench: fp32 10 ms, int8 4 ms


def test_an_imprecise_retention_is_not_drawn_as_a_point(tmp_path):
    t = analysis.load([_records(tmp_path)])
    rows = {t.family: analysis.summary_rows(t)}
    by_v = {r["variant"]: r for r in rows[t.family]}
    lo, hi = by_v["int8"]["tasks"]["t"]["retention_ci"]
    assert lo <= 0 <= hi and not by_v["int8"]["avg_retention_is_point"]
    assert by_v["fp32"]["avg_retention_is_point"]
    pts, names, withheld, _ = plots.pareto_points(t, rows, 1, "p50_ms", "avg_retention")
    assert names == ["fp32"] and pts == [(10.0, 1.0)] and withheld == ["int8"]
    fig, ax = plt.subplots()
    assert plots._pareto_panel(ax, t, rows, 1, "p50_ms", True, "avg_retention")
    drawn = [tuple(o) for c in ax.collections if hasattr(c, "get_sizes") and len(c.get_sizes()) for o in c.get_offsets()]
    assert drawn == [(10.0, 1.0)]                                   # fp32 only; int8 is not a point
    assert any("int8" in x.get_text() and "not drawn" in x.get_text() for x in ax.texts)   # and the plot says so
    plt.close(fig)
    # the score panel still draws both
    pts, names, withheld, spans = plots.pareto_points(t, rows, 1, "p50_ms", "avg_score")
    assert sorted(names) == ["fp32", "int8"] and not withheld and spans == [None, None]


def test_a_retention_drawn_as_a_point_carries_its_interval(tmp_path):
    """int8 keeps most of the gain (10 -> 28 of 40): a point, drawn with its 95% interval."""
    from matplotlib.collections import LineCollection

    t = analysis.load([_records(tmp_path, int8_right=28)])
    rows = {t.family: analysis.summary_rows(t)}
    by_v = {r["variant"]: r for r in rows[t.family]}
    lo, hi = by_v["int8"]["tasks"]["t"]["retention_ci"]
    assert by_v["int8"]["avg_retention_is_point"] and 0 < lo < by_v["int8"]["avg_retention"] < hi
    assert by_v["int8"]["avg_retention_span"] == (lo, hi)
    fig, ax = plt.subplots()
    plots._pareto_panel(ax, t, rows, 1, "p50_ms", True, "avg_retention")
    segs = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert any(abs(seg[0][0] - 4.0) < 1e-9 and sorted((seg[0][1], seg[1][1])) == [lo, hi] for seg in segs)
    plt.close(fig)

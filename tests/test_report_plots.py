"""The report's figures: what the Pareto plot draws as a point."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

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
    assert names == ["fp32"] and pts == [(10.0, 1.0)] and [n for n, _ in withheld] == ["int8"]
    assert "contains 0" in withheld[0][1]
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


def _figures(monkeypatch, draw):
    """The figures `draw()` makes, kept open (the plot functions close theirs)."""
    monkeypatch.setattr(plt, "close", lambda *a, **k: None)
    plt.close("all")
    before = set(plt.get_fignums())
    draw()
    figs = [plt.figure(n) for n in plt.get_fignums() if n not in before]
    monkeypatch.undo()
    return figs


def _crowded(tmp_path):
    """Five variants, the same scores; p50 40 ms (fp32) against 4.0-4.6 ms (int8 and ONNX)."""
    from test_report_pick import bn

    from xopt import records

    variants = {"fp32": 40.0, "onnx-int8": 4.0, "ort-stock-int8": 4.2, "openvino-int8": 4.4, "onnx-fp32": 4.6}
    recs = [bn(v, p50) for v, p50 in variants.items()]
    for lang in ("de", "ja"):
        for v in variants:
            recs.append(ev("baseline", v, lang, [1] * 10 + [0] * 30))
            recs.append(ev("xstilts", v, lang, [1] * 30 + [0] * 10))
    p = tmp_path / "crowded.jsonl"
    records.append(p, recs)
    return p


def test_crowded_points_get_a_log_axis_and_names_that_do_not_overlap(tmp_path, monkeypatch):
    t = analysis.load([_crowded(tmp_path)])
    rows = {t.family: analysis.summary_rows(t)}
    (fig,) = _figures(monkeypatch, lambda: plots.plot_pareto(t, rows, tmp_path, "fp32"))
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2] + fig.axes[3:5]:                  # the latency panels: 40 ms against 4 ms
        assert ax.get_xscale() == "log"
    for ax in fig.axes:
        names = [a for a in ax.texts if a.get_gid() == plots.LABEL]
        assert len(names) == 5
        boxes = [a.get_window_extent(renderer) for a in names]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), f"{ax.get_xlabel()}: names overlap"
    plt.close(fig)


def test_a_narrow_spread_keeps_a_linear_axis():
    fig, ax = plt.subplots()
    assert not plots._log_if_spread(ax, [10.0, 20.0, 40.0]) and ax.get_xscale() == "linear"
    assert plots._log_if_spread(ax, [3.9, 40.0]) and ax.get_xscale() == "log"
    plt.close(fig)


def test_heat_map_cells_carry_their_values(tmp_path, monkeypatch):
    t = analysis.load([_records(tmp_path, int8_right=28)])      # int8: 28 of 40 where fp32 has 30
    figs = _figures(monkeypatch, lambda: plots.plot_heatmaps(t, tmp_path, "fp32"))
    ax = figs[0].axes[0]
    cells = {(round(x.get_position()[1]), round(x.get_position()[0])): x.get_text() for x in ax.texts}
    assert cells == {(0, 0): "-5.0", (0, 1): "-5.0"}            # variant int8 x languages de, ja: 70 - 75 points
    plt.close("all")


@pytest.mark.parametrize("fp32_right, why", [(11, "fp32 gain +2.5 is not significant"),
                                             (9, "no fp32 gain to retain (-2.5)")])
def test_retention_panels_say_why_they_are_empty(tmp_path, monkeypatch, fp32_right, why):
    """--quick's case: the fp32 gain is too small (or negative), so no variant's retention is a point;
    each panel says so with the reason the tables give."""
    recs = []
    for lang in ("de", "ja"):
        for v, good in (("fp32", fp32_right), ("int8", fp32_right)):
            recs.append(ev("baseline", v, lang, [1] * 10 + [0] * 30))
            recs.append(ev("xstilts", v, lang, [1] * good + [0] * (40 - good)))
    t = analysis.load([_write(tmp_path, recs)])
    rows = {t.family: analysis.summary_rows(t)}
    (fig,) = _figures(monkeypatch, lambda: plots.plot_pareto(t, rows, tmp_path, "fp32"))
    for ax in fig.axes[:3]:                                   # the retention row
        assert ax.get_visible()
        text = " ".join(x.get_text() for x in ax.texts).replace("\n", " ")
        assert why in text and "fp32, int8" in text
    plt.close(fig)

"""report.html rendered by a real browser (headless Chromium; CI installs it): the page is not blank,
and a report with many variants, tasks and languages fits a 1,400 px window (wide tables scroll in
their own box, figures shrink to the page); the heat maps the page embeds have values in their cells."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from test_report_pick import _write, bn, ev
from xopt import report

BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium binary (apt-get install "
                                   "chromium-headless-shell); the HTML itself is checked in test_report_pick.py")
WIDTH = 1400
# written into the DOM once the page (and its images) is laid out; --dump-dom prints it
PROBE = ("<script>addEventListener('load', () => document.body.setAttribute('data-probe', JSON.stringify("
         "{scroll: document.documentElement.scrollWidth, inner: innerWidth})))</script>")


def _chromium(tmp_path, *args, width=WIDTH, height=1800):
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}", *args],
                          check=True, capture_output=True, timeout=60, text=True)


def _wide_report(tmp_path):
    """Five variants of widely spread latency, three tasks, six languages: the summary and
    per-language tables have 15 and 17 columns of intervals."""
    rng = np.random.default_rng(0)
    variants = {"fp32": 40.0, "onnx-fp32": 21.0, "onnx-int8": 4.0, "ort-stock-int8": 4.4, "openvino-int8": 3.1}
    recs = []
    for task in ("xnli", "pawsx", "panx"):
        for lang in ("en", "de", "ja", "sw", "fr", "zh"):
            for model, p in (("baseline", 0.5), ("xstilts", 0.75)):
                right = rng.random(200) < p
                for v in variants:
                    flip = rng.random(200) < (0.02 if v.endswith("fp32") else 0.08)
                    recs.append(ev(model, v, lang, [int(x) for x in right ^ flip], task=task))
    recs += [bn(v, p50) for v, p50 in variants.items()]
    p = tmp_path / "wide.jsonl"
    from xopt import records

    records.append(p, recs)
    return p


@pytest.fixture(scope="module")
def wide_rep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wide")
    report.write_report([_wide_report(tmp)], tmp / "rep")
    return tmp / "rep"


@needs_browser
def test_chromium_renders_the_report(tmp_path):
    import matplotlib.image as mpimg

    rep = tmp_path / "rep"
    report.write_report([_write(tmp_path)], rep)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", (rep / "report.html").as_uri(), width=1200)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1800, 1200)
    ink = (img < 0.9).any(-1)
    assert ink.mean() > 0.02                       # text, tables and plots, not a white page
    saturated = (img.max(-1) - img.min(-1)) > 0.2
    assert saturated.mean() > 0.005               # the embedded PNGs are drawn (heat map, plots): the page
    #                                               without its images has almost no saturated pixels


@needs_browser
def test_a_wide_report_fits_a_1400px_window(tmp_path, wide_rep):
    page = (wide_rep / "report.html").read_text()
    assert len(re.findall(r"<th>", page)) > 60          # the tables are wide enough to overflow unboxed
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri()).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, "the probe script did not run"
    got = json.loads(html.unescape(m.group(1)))
    assert got["inner"] == WIDTH
    assert got["scroll"] <= WIDTH, f"the page is {got['scroll']} px wide in a {WIDTH} px window"


def _grid_box(img):
    """(top, bottom, left, right) of a heat map's cell grid in its PNG: the widest run of columns
    holding saturated (coloured) pixels, the colour bar being a narrower run to its right."""
    sat = (img.max(-1) - img.min(-1)) > 0.15
    cols = sat.any(0)
    runs, start = [], None
    for x, on in enumerate(list(cols) + [False]):
        if on and start is None:
            start = x
        elif not on and start is not None:
            runs.append((x - start, start, x))
            start = None
    _, left, right = max(runs)
    rows = np.flatnonzero(sat[:, left:right].any(1))
    return rows[0], rows[-1] + 1, left, right


def test_the_page_s_heat_maps_carry_their_values(wide_rep):
    """Inside the cell grid of every heat map the page embeds there is dark ink (the values written
    in the light cells; RdBu's darkest colours keep one channel above 0.37): a grid of bare colour
    has none."""
    import base64
    import io

    import matplotlib.image as mpimg

    page = (wide_rep / "report.html").read_text()
    maps = re.findall(r'<img alt="[^"]*score change[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(maps) == 3                                      # one per task
    for data in maps:
        img = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")[..., :3]
        top, bottom, left, right = _grid_box(img)
        inner = img[top + 3:bottom - 3, left + 3:right - 3]    # off the axes' frame
        ink = (inner.max(-1) < 0.3).sum()
        assert ink > 50, f"no values in the heat map's cells ({ink} dark pixels)"

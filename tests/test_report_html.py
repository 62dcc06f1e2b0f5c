"""report.html rendered by a real browser (headless Chromium; CI installs it): the page is not blank."""

import shutil
import subprocess

import pytest

from test_report_pick import _write
from xopt import report

BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium binary (apt-get install chromium-headless-shell); "
                                            "the HTML itself is checked in test_report_pick.py")
def test_chromium_renders_the_report(tmp_path):
    import matplotlib.image as mpimg

    rep = tmp_path / "rep"
    report.write_report([_write(tmp_path)], rep)
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800",
                    f"--screenshot={shot}", (rep / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=60)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1800, 1200)
    ink = (img < 0.9).any(-1)
    assert ink.mean() > 0.02                       # text, tables and plots, not a white page
    saturated = (img.max(-1) - img.min(-1)) > 0.2
    assert saturated.mean() > 0.005               # the embedded PNGs are drawn (heat map, plots): the page
    #                                               without its images has almost no saturated pixels

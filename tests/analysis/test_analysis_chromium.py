"""The HTML report renders in a real browser: headless Chromium takes a screenshot.

Checks: the screenshot is not blank, it shows the figures (pixels in the sources'
colours, which only the embedded images contain), and every <img> is a decodable PNG.
Skipped when Chromium is not installed (Debian package ``chromium``).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pytest

from robust_transfer.analysis import analyze
from robust_transfer.analysis.plots import PALETTE
from robust_transfer.analysis.synthetic import make_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium) so the report cannot be rendered")


def _screenshot(html_path, tmp_path) -> np.ndarray:
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", html_path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}"
    return mpimg.imread(shot)[..., :3]


def _near(pixels: np.ndarray, hex_color: str, tol: float = 0.08) -> int:
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) < tol).sum())


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    runs, epochs = make_study()
    result = analyze(runs, epochs, tmp_path / "report")
    pixels = _screenshot(result.html_path, tmp_path)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05 and (pixels.mean(axis=-1) < 0.5).mean() > 0.005  # not blank
    for color in PALETTE[:3]:  # the robust sources' lines and bands, drawn in the figures
        assert _near(pixels, color) > 100, f"no {color} pixels: figures did not render"
    html = result.html_path.read_text()
    sources = re.findall(r"<img\s+src='([^']*)'", html)
    assert len(sources) == html.count("<img") == 4
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.ndim == 3 and min(image.shape[:2]) > 100

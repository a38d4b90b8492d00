"""The HTML report renders in a real browser (headless Chromium), verdict above the fold.

Checks: in a 1200 x 1000 window, both verdict sentences and the whole verdict figure end
above 1,000 px (their positions measured by the browser's layout, on a copy of the report
with a measuring script added: the report itself has no script); the screenshot's first
1,000 px show the heatmap's diverging colours.
Skipped when Chromium is not installed (Debian package ``chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest
from synthetic_study import make_study

from robust_transfer.analysis import analyze

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium) so the report cannot be rendered")
FOLD = 1000
MEASURE = """<script>
window.addEventListener('load', () => {
  const bottom = el => el.getBoundingClientRect().bottom + window.scrollY;
  const out = {sentences: [...document.querySelectorAll('p.verdict')].map(
                 p => [p.textContent.slice(0, 12), bottom(p)]),
               verdict: [...document.querySelectorAll("img[alt^='verdict_']")].map(bottom)};
  const pre = document.createElement('pre'); pre.id = 'measured';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script></body>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--window-size=1200,{FOLD}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _measure(html_path, tmp_path) -> dict:
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", MEASURE))
    proc = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r"<pre id=\"measured\">([^<]*)</pre>", proc.stdout)
    assert found, f"no measurement (exit {proc.returncode}): {proc.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.slow
def test_verdict_figure_and_sentences_are_above_the_fold(tmp_path):
    runs, epochs = make_study()
    result = analyze(runs, epochs, tmp_path / "report")
    measured = _measure(result.html_path, tmp_path)
    assert [s[0] for s in measured["sentences"]] == ["few images: ", "few epochs: "]
    assert all(0 < bottom <= FOLD for _, bottom in measured["sentences"]), measured
    assert len(measured["verdict"]) == 1 and 0 < measured["verdict"][0] <= FOLD, measured

    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", result.html_path.resolve().as_uri())
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}"
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (FOLD, 1200)
    r, b = pixels[..., 0], pixels[..., 2]
    blue = ((b - r) > 0.25) & (b > 0.5)  # RdBu's blue cells: the robust sources ahead
    assert blue.sum() > 2000, "no heatmap colours above the fold"

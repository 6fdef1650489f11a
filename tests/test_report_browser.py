"""The HTML report in a real browser: headless Chromium opens it from disk (file://), offline, and renders
it. Slow and needs Debian's chromium: `make report-browser` installs it when missing and runs this."""

import subprocess
from pathlib import Path

import pytest

from recexplainer.report.html import write_html

from .helpers import report_root

CHROMIUM = Path("/usr/bin/chromium")
HEADINGS = ["RecExplainer report", "Recommender", "Alignment", "Training curves", "Explanations"]


def _chromium(tmp_path, *args):
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (make report-browser installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    index = write_html(report_root(tmp_path), tmp_path / "out")
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        gray = image.convert("L")
        dark = sum(gray.histogram()[:128])  # text, table lines and plots, not a blank page
        assert dark > 5_000 and len(image.convert("RGB").getcolors(1 << 20) or []) > 50
    dom = _chromium(tmp_path, "--dump-dom", index.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert all(f">{h}</h" in dom.stdout for h in HEADINGS + ["Example explanations"])
    assert dom.stdout.count('class="example"') == 12 and "<mark" in dom.stdout

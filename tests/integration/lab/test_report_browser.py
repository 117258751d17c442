"""The drill report in a real browser: headless Chromium (Debian's ``chromium``) opens the
HTML file, takes a screenshot and dumps the DOM it built; the test fails on a console
message (a script error, a blocked request: the page has no script and fetches nothing),
a blank page, or a swimlane that did not become an SVG element. No root: the report is
built from the drills' own report classes filled in by ``report_samples``.

The checker is checked too: a page with a script error and a blank page must fail it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.integration.lab.report_samples import nemesis_report, promotion_report, uplink_report, venue_report

from lab.report import render_html
from lab.report.drills import report_data, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (./run system-deps)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]


@dataclass
class Rendered:
    screenshot: Path
    dom: str
    console: list[str] = field(default_factory=list)

    def swimlane_svgs(self) -> list[str]:
        """The <svg> elements of the swimlane figures, as the browser built the DOM."""
        return re.findall(r'<figure class="plot swimlane[^>]*>\s*(<svg.*?</svg>)', self.dom, re.S)

    def blank(self) -> str | None:
        """Why the screenshot looks blank, or None: almost every pixel the same colour."""
        from PIL import Image

        with Image.open(self.screenshot) as image:
            grey = image.convert("L")
            histogram = grey.histogram()
            pixels = grey.width * grey.height
        dominant = max(histogram)
        drawn = 1 - dominant / pixels
        if drawn < 0.03:
            return f"{drawn:.2%} of the pixels differ from the page's main colour"
        return None


def open_in_chromium(page: Path, shots: Path, *, size: str = "1400,3000") -> Rendered:
    """Two headless runs with fresh profiles: the screenshot (console messages from its
    log) and the DOM."""
    assert CHROMIUM is not None
    url = page.resolve().as_uri()
    screenshot = shots / f"{page.stem}.png"
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        shot = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}/a", f"--screenshot={screenshot}",
                               f"--window-size={size}", url], capture_output=True, text=True, timeout=120)
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}/b", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    assert screenshot.exists(), f"chromium wrote no screenshot (exit {shot.returncode}):\n{shot.stderr[-3000:]}"
    # Chromium logs every console message ("CONSOLE") and uncaught exception this way.
    console = [line for line in shot.stderr.splitlines() + dom.stderr.splitlines()
               if ":CONSOLE" in line or "Uncaught" in line]
    return Rendered(screenshot, dom.stdout, console)


@needs_chromium
def test_the_lab_report_renders_in_chromium_with_its_swimlanes_and_no_console_error(tmp_path: Path) -> None:
    page = write(tmp_path / "lab-report.html", "lifeline lab (made-up drill data)",
                 [uplink_report(), promotion_report("standby", 3), promotion_report("partition", 2),
                  venue_report()])
    rendered = open_in_chromium(page, tmp_path)
    assert rendered.console == [], rendered.console
    assert rendered.blank() is None, rendered.blank()
    svgs = rendered.swimlane_svgs()
    assert len(svgs) == 5, f"{len(svgs)} swimlane SVGs in the DOM"
    for svg in svgs:
        assert "edge-a" in svg and "edge-b" in svg and "overlap 0 ms" in svg
    assert 'id="uplinks-uplink"' in rendered.dom and 'id="venues-venue"' in rendered.dom
    assert 'id="histograms-standby"' in rendered.dom


@needs_chromium
def test_the_nemesis_report_renders_the_whole_run_and_its_close_ups(tmp_path: Path) -> None:
    report = nemesis_report(seconds=300)
    page = write(tmp_path / "nemesis.html", "lifeline drill nemesis (made-up history)", [report])
    rendered = open_in_chromium(page, tmp_path)
    assert rendered.console == [], rendered.console
    assert rendered.blank() is None, rendered.blank()
    svgs = rendered.swimlane_svgs()
    assert len(svgs) == 4, f"{len(svgs)} swimlane SVGs: the whole run and three close-ups of 120 s expected"
    for svg in svgs:
        assert "edge-a" in svg and "edge-b" in svg
    assert "overlap 0 ms" in rendered.dom and 'id="histograms-nemesis"' in rendered.dom
    assert 'class="badge pass"' in rendered.dom and "no acknowledged record lost" in rendered.dom


@needs_chromium
def test_the_checker_catches_a_script_error_a_blocked_request_and_a_blank_page(tmp_path: Path) -> None:
    data = report_data("t", [promotion_report("standby", 1)])
    text = render_html(data)
    broken = tmp_path / "broken.html"
    # A script (the policy forbids it: a console error) and an image from outside
    # (blocked by the policy before any request: another console error).
    broken.write_text(text.replace("</body>", '<script>throw new Error("boom")</script>'
                                   '<img src="http://127.0.0.1:9/x.png"></body>'))
    rendered = open_in_chromium(broken, tmp_path, size="800,600")
    assert any("Content Security Policy" in line for line in rendered.console), rendered.console
    error = tmp_path / "error.html"
    error.write_text('<!DOCTYPE html><html><body><p>text</p><script>throw new Error("boom")</script></body></html>')
    rendered = open_in_chromium(error, tmp_path, size="800,600")
    assert any("Uncaught Error: boom" in line for line in rendered.console), rendered.console
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    rendered = open_in_chromium(blank, tmp_path, size="800,600")
    assert rendered.blank() is not None
    assert rendered.swimlane_svgs() == []

"""The report page in a real browser (headless Chromium): images load, links resolve, and
the numbers shown equal those in metrics/. The screenshot is kept as a report artefact."""

from __future__ import annotations

import json
import shutil

import browser
import pytest

from seedscope.metrics import format_value

pytestmark = pytest.mark.slow


@pytest.mark.skipif(browser.chromium() is None, reason="chromium missing: `make browser`")
def test_report_in_headless_chromium(smoke_project):
    reports = smoke_project / "reports"
    shot = reports / "screenshot.png"
    seen = browser.inspect_page(reports, "index.html", shot)
    assert shot.stat().st_size > 20_000
    assert seen["images"], "the page shows figures"
    broken = [i["src"] for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    bad_links = {href: status for href, status in seen["links"].items() if status != 200}
    assert not bad_links, bad_links
    assert any(href.endswith(".html") for href in seen["links"])
    expected = {}
    for path in sorted((smoke_project / "metrics" / "details").glob("*.json")):
        for key, entry in json.loads(path.read_text())["headline"].items():
            expected[f"{path.stem}.{key}"] = format_value(entry)
    shown = {k: v.strip() for k, v in seen["metrics"].items()}
    shown_analyses = {k for k in expected if k.split(".")[0] != "corpus"}
    assert shown_analyses <= set(shown), sorted(shown_analyses - set(shown))
    for key in shown:
        assert shown[key] == expected[key], key
    # keep the screenshot where a reader of the test run finds it
    shutil.copyfile(shot, smoke_project / "reports" / "screenshot-browser-test.png")

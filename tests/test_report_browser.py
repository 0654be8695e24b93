"""The book in a real browser (headless Chromium) and on disk, from the smoke pipeline run:
images load, links resolve, nothing is fetched from the network, every number shown equals
metrics/, the first screen (1280x800) shows the question and the first answers, and no
rendered page shows noise or an absolute path of this machine. The first-screen screenshot is
kept as an artefact: reports/browser-test/first-screen.png in this checkout."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import browser
import pytest

from seedscope.pipeline.answers import ANSWERS, format_headline

pytestmark = pytest.mark.slow

ARTEFACTS = Path(__file__).resolve().parents[1] / "reports" / "browser-test"
_SUPER = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def shown_numbers(text: str) -> list[float]:
    """The numbers in a shown text ('0.948 (95% CI 0.947-0.948)', '1,024', '1.2×10⁻⁴')."""
    text = re.sub(r"×10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "e" + m.group(1).translate(_SUPER), text)
    text = text.replace("95% CI", " ").replace(",", "")
    return [float(x) for x in re.findall(r"(?<![\d.e])-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def test_shown_numbers_reads_back_the_formats():
    assert shown_numbers("0.948 (95% CI 0.947-0.948)") == [0.948, 0.947, 0.948]
    assert shown_numbers("-0.120 (95% CI -0.151 to -0.0900)") == [-0.12, -0.151, -0.09]
    assert shown_numbers("1,048,576") == [1048576.0]
    assert shown_numbers("-1.23×10⁻⁴ (95% CI 2.00×10⁻⁵-3.00×10⁻⁴)") == [-1.23e-4, 2e-5, 3e-4]


def _close(shown: float, true: float) -> bool:
    # 3 significant digits: within half a unit of the third digit
    return math.isclose(shown, true, rel_tol=5.1e-3, abs_tol=1e-12)


def _expected(project: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((project / "metrics" / "details").glob("*.json")):
        for key, entry in json.loads(path.read_text())["headline"].items():
            out[f"{path.stem}.{key}"] = entry
    return out


def _check_numbers(shown: dict[tuple[str, str], list[str]], expected: dict[str, dict]) -> None:
    for (key, part), text in ((k, text) for k, texts in shown.items() for text in texts):
        assert key in expected, f"{key} is shown but not in metrics/"
        entry = expected[key]
        if part == "full":
            assert text == format_headline(entry), key
            want = [entry[k] for k in ("value", "ci_low", "ci_high") if entry.get(k) is not None]
        else:
            want = [entry["value"]]
        got = shown_numbers(text)
        assert len(got) == len(want), (key, text)
        assert all(_close(g, w) for g, w in zip(got, want, strict=True)), (key, text, want)


@pytest.mark.skipif(browser.chromium() is None, reason="chromium missing: `make browser`")
def test_book_front_page_in_headless_chromium(smoke_project):
    reports = smoke_project / "reports"
    assert 'url=book/index.html"' in (reports / "index.html").read_text()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "first-screen.png"
    seen = browser.inspect_page(reports / "book", "index.html", shot, marker="The question.")
    assert shot.stat().st_size > 20_000

    images = seen["images"]
    assert len(images) >= 6, "a key figure beside each analysis"
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    local = {href: status for href, status in seen["links"].items() if status != "external"}
    assert {href: s for href, s in local.items() if s != 200} == {}
    for answer in ANSWERS:
        assert any(answer.stage in href and href.endswith(".html") for href in local), answer

    expected = _expected(smoke_project)
    _check_numbers(seen["metrics"], expected)
    answered = {key.split(".")[0] for key, _ in seen["metrics"]}
    assert answered == {a.stage for a in ANSWERS}, "a number for every analysis"

    # The first screen (1280x800) shows the question and at least the first answer's number.
    assert seen["marker_top"] is not None and seen["marker_top"] < 400
    assert seen["first_metric_top"] is not None and seen["first_metric_top"] < 780


def test_headline_page_lists_every_number(smoke_project):
    page = (smoke_project / "reports" / "book" / "headlines.html").read_text()
    shown = browser.tagged_metrics(page)
    expected = _expected(smoke_project)
    analyses = {k for k in expected if k.split(".")[0] != "corpus"}
    assert {key for key, _ in shown} == analyses
    _check_numbers(shown, expected)


def test_book_works_offline_and_every_link_resolves(smoke_project):
    site = smoke_project / "reports" / "book"
    found = browser.crawl_site(site)
    assert found["broken"] == []
    assert found["remote_assets"] == [], "the book fetches nothing from the network"
    chapters = sorted(p.stem for p in (site / "chapters").glob("*.html"))
    assert chapters == sorted(
        p.stem
        for p in (smoke_project / "reports" / "notebooks").glob("*.ipynb")
        if p.stem != "7_report"
    )
    # provenance on every page
    for page in [site / "index.html", *sorted((site / "chapters").glob("*.html"))]:
        text = page.read_text()
        assert "params hash" in text and "git commit" in text and "mini-smoke" in text, page


def test_rendered_pages_hold_no_noise_or_absolute_paths(smoke_project):
    pages = sorted((smoke_project / "reports").rglob("*.html"))
    assert len(pages) > 15
    forbidden = [str(smoke_project), sys.prefix, str(Path.home()) + "/", "/tmp/"]
    noise = ["IProgress", "Loading weights", "RuntimeWarning", "output stderr", 'stderr">']
    for page in pages:
        text = page.read_text(errors="replace")
        for needle in forbidden + noise:
            assert needle not in text, f"{page.relative_to(smoke_project)} shows {needle!r}"

"""Open a page in headless Chromium (Debian's `chromium`): screenshot, image, link, layout
checks; and a static crawl of a whole site (every local link and asset resolves, nothing is
fetched from the network, no absolute path of this machine is shown).

The page is served on 127.0.0.1; a copy of it with a small checking script appended is
loaded with `--dump-dom`, so what is checked is what a browser really rendered.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Images, links (resolved by the browser against the page), and where the first-screen
# landmarks are: the element holding `marker` text and the first tagged number.
CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'),
      complete: i.complete, width: i.naturalWidth}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const marker = [...document.querySelectorAll('p, h1, h2')]
      .find(e => e.textContent.includes(MARKER));
  const first = document.querySelector('[data-metric]');
  const top = e => e ? e.getBoundingClientRect().top + window.scrollY : null;
  const pre = document.createElement('pre');
  pre.id = 'seedscope-check';
  pre.textContent = JSON.stringify({imgs, links, marker_top: top(marker),
      first_metric_top: top(first), viewport: [window.innerWidth, window.innerHeight]});
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextmanager
def serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _run(args: list[str], profile: Path) -> str:
    out = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


class _Metrics(HTMLParser):
    """Texts of elements carrying `data-metric` (with their `data-part`)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], list[str]] = {}
        self._key: tuple[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-metric" in attrs:
            self._key = (attrs["data-metric"], attrs.get("data-part") or "full")
            self.values.setdefault(self._key, []).append("")

    def handle_data(self, data):
        if self._key:
            self.values[self._key][-1] += data

    def handle_endtag(self, tag):
        self._key = None


def tagged_metrics(page_html: str) -> dict[tuple[str, str], list[str]]:
    """(stage.key, part) -> the texts shown (a number may be shown more than once), for every
    `data-metric` element of a page."""
    parser = _Metrics()
    parser.feed(page_html)
    return {k: [v.strip() for v in texts] for k, texts in parser.values.items()}


def inspect_page(
    folder: Path, page: str, screenshot: Path, marker: str, size: tuple[int, int] = (1280, 800)
) -> dict:
    """Render `folder/page` in Chromium at `size`; return images, links (with HTTP status of
    those on this site), metric texts as the browser shows them, the page offsets of the
    `marker` text and of the first tagged number; write a first-screen screenshot."""
    page_path = folder / page
    check_page = page_path.with_name("_browser_check.html")
    script = CHECK_SCRIPT.replace("MARKER", json.dumps(marker))
    check_page.write_text(page_path.read_text().replace("</body>", script + "</body>"))
    window = f"--window-size={size[0]},{size[1]}"
    try:
        with serve(folder) as base, tempfile.TemporaryDirectory() as profile:
            _run([f"--screenshot={screenshot}", window, f"{base}/{page}"], Path(profile) / "a")
            check_url = f"{base}/{check_page.relative_to(folder).as_posix()}"
            dom = _run(
                ["--virtual-time-budget=10000", window, "--dump-dom", check_url],
                Path(profile) / "b",
            )
            # the theme's scripts may add attributes (tabindex) to the <pre>
            opening = re.search(r'<pre id="seedscope-check"[^>]*>', dom)
            assert opening, "the checking script did not run"
            start = opening.end()
            found = json.loads(
                dom[start : dom.index("</pre>", start)]
                .replace("&quot;", '"')
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
            )
            status = {}
            for href in found["links"]:
                url = href.split("#")[0]
                if not url.startswith(base):
                    status[href] = "external"
                    continue
                url = url.replace("_browser_check.html", Path(page).name)
                try:
                    with urllib.request.urlopen(url, timeout=10) as resp:
                        status[href.replace(base, "")] = resp.status
                except Exception as exc:  # noqa: BLE001 - record any failure as the status
                    status[href.replace(base, "")] = str(exc)
    finally:
        check_page.unlink(missing_ok=True)
    return {
        "images": found["imgs"],
        "links": status,
        "metrics": tagged_metrics(dom),
        "marker_top": found["marker_top"],
        "first_metric_top": found["first_metric_top"],
        "viewport": found["viewport"],
    }


class _Refs(HTMLParser):
    """Every href/src of a page, and those that load an asset (script, style, image)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.assets: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag in ("script", "img", "iframe", "source") and attrs.get("src"):
            self.assets.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if any(r in rel for r in ("stylesheet", "preload", "icon", "modulepreload")):
                self.assets.append(attrs["href"])


def crawl_site(site: Path) -> dict[str, list[str]]:
    """Every HTML page under `site`: local links/assets that do not resolve to a file, and
    assets loaded from outside the site (a site that works offline has none)."""
    broken: list[str] = []
    remote_assets: list[str] = []
    pages = [p for p in sorted(site.rglob("*.html")) if "_static" not in p.relative_to(site).parts]
    for page in pages:
        refs = _Refs()
        refs.feed(page.read_text(errors="replace"))
        for ref in refs.links + refs.assets:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//"):
                if ref in refs.assets:
                    remote_assets.append(f"{page.relative_to(site)}: {ref}")
                continue
            if not parts.path:  # '#anchor' on the same page
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {ref}")
    return {"broken": broken, "remote_assets": remote_assets}


def first_screen(site: Path, screenshot: Path, size: tuple[int, int] = (1280, 800)) -> None:
    """Screenshot the first screen of `site`/index.html as a reader's browser shows it."""
    with serve(site) as base, tempfile.TemporaryDirectory() as profile:
        window = f"--window-size={size[0]},{size[1]}"
        _run([f"--screenshot={screenshot.resolve()}", window, f"{base}/index.html"], Path(profile))


if __name__ == "__main__":  # python tests/browser.py reports/book docs/report.png
    import sys

    first_screen(Path(sys.argv[1]), Path(sys.argv[2]))

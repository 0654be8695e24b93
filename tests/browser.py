"""Open a page in headless Chromium (Debian's `chromium`): screenshot, image and link checks.

The page is served on 127.0.0.1; a copy of it with a small checking script appended is
loaded with `--dump-dom`, so what is checked is what a browser really rendered.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

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

CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'),
      complete: i.complete, width: i.naturalWidth}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const pre = document.createElement('pre');
  pre.id = 'seedscope-check';
  pre.textContent = JSON.stringify({imgs, links});
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
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
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        self._key = dict(attrs).get("data-metric")

    def handle_data(self, data):
        if self._key:
            self.values[self._key] = self.values.get(self._key, "") + data

    def handle_endtag(self, tag):
        self._key = None


def inspect_page(folder: Path, page: str, screenshot: Path) -> dict:
    """Render `folder/page` in Chromium; return images, links (with HTTP status) and metric
    texts as the browser shows them, and write a full-page screenshot."""
    check_page = folder / "_browser_check.html"
    check_page.write_text((folder / page).read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        with serve(folder) as base, tempfile.TemporaryDirectory() as profile:
            _run(
                [f"--screenshot={screenshot}", "--window-size=1280,2400", f"{base}/{page}"],
                Path(profile) / "a",
            )
            dom = _run(
                ["--virtual-time-budget=10000", "--dump-dom", f"{base}/{check_page.name}"],
                Path(profile) / "b",
            )
            start = dom.index('<pre id="seedscope-check">') + len('<pre id="seedscope-check">')
            found = json.loads(
                dom[start : dom.index("</pre>", start)]
                .replace("&quot;", '"')
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
            )
            status = {}
            for href in found["links"]:
                try:
                    with urllib.request.urlopen(f"{base}/{href}", timeout=10) as resp:
                        status[href] = resp.status
                except Exception as exc:  # noqa: BLE001 - record any failure as the status
                    status[href] = str(exc)
            parser = _Metrics()
            parser.feed(dom)
    finally:
        check_page.unlink(missing_ok=True)
    return {"images": found["imgs"], "links": status, "metrics": parser.values}

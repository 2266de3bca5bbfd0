"""Headless Chromium for the browser tests: locate Debian's chromium, launch it through Playwright,
serve a folder on 127.0.0.1, and keep every request the page makes on record.

Debian's package is used, never ``playwright install``: the test machines reach only package
registries. ``python tasks.py browser`` installs it with apt-get (``.ci/run`` does so before the
tests); a missing browser fails the tests with that hint instead of being installed by them. The
flags turn off Chromium's own background traffic (component updates, sync, QUIC probes), which a
closed network would refuse anyway.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def locate_chromium() -> Path:
    """Debian's chromium (else a ``chromium`` on PATH); a clear failure, not a skip, when there is none.

    Installing it is a setup step (``python tasks.py browser``, which ``.ci/run`` runs before the
    tests), never a side effect of a test run.
    """
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(f"{CHROMIUM} is missing: run `python tasks.py browser` (installs Debian's chromium "
                    "with apt-get; needs root or sudo)", pytrace=False)
    return Path(found)


def import_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package `playwright` is missing: install the dev extras "
                    "(`pip install -e .[dev]`; Debian's chromium is used, no `playwright install`)", pytrace=False)
    return sync_playwright


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` at http://127.0.0.1:PORT/ (a free port) from a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Traffic:
    """What one browser context asked for: every request URL, failed responses, blocked URLs, JS errors."""

    base: str
    requests: list[str] = field(default_factory=list)
    bad_status: list[tuple[str, int]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def local(self, url: str) -> bool:
        return url.startswith((self.base, "file://", "data:", "about:"))

    def assert_clean(self) -> None:
        assert self.requests, "no request recorded"
        outside = [u for u in self.requests if not self.local(u)]
        assert not outside and not self.blocked, f"requests left 127.0.0.1: {outside or self.blocked}"
        assert not self.bad_status, f"failed responses: {self.bad_status}"
        assert not self.errors, f"JavaScript errors: {self.errors}"


@contextmanager
def watched_page(browser: Any, base: str, viewport: dict | None = None) -> Iterator[tuple[Any, Traffic]]:
    """A fresh context and page whose requests are recorded; anything not on ``base`` is aborted."""
    traffic = Traffic(base)
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 900})

    def route(r: Any) -> None:
        if traffic.local(r.request.url):
            r.continue_()
        else:
            traffic.blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    context.on("request", lambda req: traffic.requests.append(req.url))
    context.on("response", lambda res: res.status >= 400 and traffic.bad_status.append((res.url, res.status)))
    page = context.new_page()
    page.on("pageerror", lambda exc: traffic.errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and traffic.errors.append(msg.text))
    try:
        yield page, traffic
    finally:
        context.close()


ROWS_JS = """(sel) => Array.from(document.querySelectorAll(sel + ' tbody tr')).map(r => ({
    entry: r.getAttribute('data-entry'), hidden: r.hidden, unreliable: r.getAttribute('data-unreliable'),
    cells: Array.from(r.cells).map(c => ({text: c.textContent.trim(), value: c.getAttribute('data-value')}))}))"""

COLUMN_JS = """([sel, start]) => {  // visual column index of the header whose text starts with `start`
    let col = 0;
    for (const th of document.querySelector(sel).tHead.rows[0].cells) {
        if (th.textContent.trim().toLowerCase().startsWith(start)) return col;
        col += th.colSpan || 1;
    }
    return -1;
}"""


def rows(page: Any, table: str) -> list[dict]:
    """The table's body rows in DOM order: entry id, hidden flag, data-unreliable, cells' text and data-value."""
    return page.evaluate(ROWS_JS, table)


def column(page: Any, table: str, header_start: str) -> int:
    col = page.evaluate(COLUMN_JS, [table, header_start.lower()])
    assert col >= 0, f"no header starting with {header_start!r} in {table}"
    return col


def cell(row: dict, col: int) -> dict:
    """The cell at visual column ``col`` (body rows here have no colspans)."""
    return row["cells"][col]


def number(c: dict) -> float | None:
    """A cell's sort key as the contract defines it: data-value, else the number its text starts with."""
    raw = (c["value"] if c["value"] is not None else c["text"]).strip()
    try:
        return float(raw.split()[0].rstrip("%"))
    except (ValueError, IndexError):
        return None

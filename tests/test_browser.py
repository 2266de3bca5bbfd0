"""The site in a real browser (headless Debian Chromium driven by Playwright), served over 127.0.0.1.

* ``test_board_js_on_contract_page``: board.js alone, on a hand-written page that follows the index's
  HTML contract (sortable ``th[data-sort]``, ``data-value`` keys, "–" last, the three filters, two tables).
* the ``test_site_*`` tests: a site built by :func:`leaderboard.build_site` from a hand-written store
  (five runs, one flagged by a failed check, one whose name is an HTML injection, one partial):
  sorting by "worst case", the filters, the flag on the row and on the entry page, the charts, a
  screenshot (``tests/artifacts/``), the injected name staying text, and no request leaving 127.0.0.1.
* the ``hostile`` tests (issue 15): a site whose every user-controlled field holds a script payload
  (entry and paper fields, claims, stored run, protocol and detector records, check summaries and JSON
  evidence, SVG labels and curve legends, hostile paper URLs), plus payloads typed into board.js's
  filter: on every page (index, findings, each run) nothing runs, no element or inline handler the
  templates never write appears, every payload is still shown as text, and the built HTML holds no
  link target but http(s) URLs and files of the site.

Chromium must be installed (``python tasks.py browser``; ``tests/browser.py`` fails naming it when it
is missing); Playwright must be installed.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bench.checks.suite import CheckResult
from bench.store.database import Result, Stage, Store
from leaderboard import build_site
from registry.entry import Claim, Paper, is_http_url
from tests import browser as browser_helpers
from tests.browser import ARGS, cell, column, import_playwright, locate_chromium, number, rows, serve, watched_page
from tests.sites import PROTOCOL, N, add_run, anchors, link_targets, make_entry

pytestmark = pytest.mark.browser

BOARD_JS = Path(__file__).resolve().parents[1] / "leaderboard" / "templates" / "board.js"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
UNRELIABLE = "evaluation possibly unreliable"


def test_missing_chromium_fails_naming_the_install_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fixture never installs anything: without a browser it fails (not skips) and names the task."""
    monkeypatch.setattr(browser_helpers, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"python tasks\.py browser"):
        browser_helpers.locate_chromium()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = locate_chromium()
    sync_playwright = import_playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=ARGS)
        yield b
        b.close()


# --- board.js on a hand-written page following the contract ---------------------------------------------

CONTRACT_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>contract</title></head><body>
<input type="search" class="board-filter" data-table="board-1" placeholder="filter">
<select class="kind-filter" data-table="board-1"><option value="">all</option>
<option value="adversarial-training">adversarial-training</option><option value="standard">standard</option>
<option value="regulariser">regulariser</option></select>
<label><input type="checkbox" class="flagged-only" data-table="board-1"> only flagged</label>
<table class="board" id="board-1"><thead><tr>
<th>#</th><th data-sort="text">entry</th><th data-sort="text">kind</th><th data-sort="num">clean</th>
<th data-sort="num" class="primary">worst case<br>@0.3</th><th data-sort="num">score</th><th>note</th>
</tr></thead><tbody>
<tr data-entry="alpha" data-unreliable="0" data-kind="adversarial-training"><td>1</td><td>alpha</td>
<td>adversarial-training</td><td>95.0</td><td>70.0</td><td data-value="3">high</td><td></td></tr>
<tr data-entry="beta" data-unreliable="1" data-kind="regulariser"><td>2</td><td>Beta-Model</td><td>regulariser</td>
<td>99.0</td><td data-value="55.5">55.5</td><td data-value="1">low</td><td>evaluation possibly unreliable</td></tr>
<tr data-entry="gamma" data-unreliable="0" data-kind="standard"><td>3</td><td>gamma</td><td>standard</td>
<td>98.0</td><td>–</td><td data-value="2">mid</td><td></td></tr>
<tr data-entry="delta" data-unreliable="1" data-kind="standard"><td>4</td><td>delta</td><td>standard</td>
<td>90.0</td><td>12.0</td><td></td><td>flagged</td></tr>
<tr data-entry="epsilon" data-unreliable="0" data-kind="adversarial-training"><td>5</td><td>epsilon</td>
<td>adversarial-training</td><td>9.0</td><td data-value="55.5">55.50</td><td data-value="10">top</td><td></td></tr>
</tbody></table>
<input type="search" class="board-filter" data-table="board-2" placeholder="filter">
<table class="board" id="board-2"><thead><tr><th>#</th><th data-sort="text">entry</th>
<th data-sort="num">worst case</th></tr></thead><tbody>
<tr data-entry="x" data-unreliable="0" data-kind="standard"><td>1</td><td>beta two</td><td>50.0</td></tr>
<tr data-entry="y" data-unreliable="0" data-kind="standard"><td>2</td><td>other</td><td>20.0</td></tr>
</tbody></table>
<script src="board.js"></script></body></html>"""


@pytest.fixture(scope="module")
def contract_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("contract")
    (root / "index.html").write_text(CONTRACT_PAGE, encoding="utf-8")
    shutil.copyfile(BOARD_JS, root / "board.js")
    with serve(root) as base:
        yield base


def order(page: Any, table: str = "#board-1") -> list[str]:
    return [r["entry"] for r in rows(page, table)]


def visible(page: Any, table: str = "#board-1") -> list[str]:
    return [r["entry"] for r in rows(page, table) if not r["hidden"]]


def aria(page: Any, table: str = "#board-1") -> dict[str, str]:
    return page.evaluate("(t) => Object.fromEntries(Array.from(document.querySelectorAll(t + ' thead th'))"
                         ".filter(h => h.hasAttribute('aria-sort'))"
                         ".map(h => [h.textContent.trim(), h.getAttribute('aria-sort')]))", table)


def test_board_js_on_contract_page(browser: Any, contract_url: str) -> None:
    with watched_page(browser, contract_url) as (page, traffic):
        page.goto(contract_url + "index.html")
        initial = order(page)
        assert initial == ["alpha", "beta", "gamma", "delta", "epsilon"]
        ranks = {r["entry"]: r["cells"][0]["text"] for r in rows(page, "#board-1")}
        worst = page.locator("#board-1 th", has_text="worst case")
        worst.click()  # num: descending first; the tie keeps the official order; "–" last
        assert order(page) == ["alpha", "beta", "epsilon", "delta", "gamma"]
        assert aria(page) == {"worst case@0.3": "descending"}
        worst.click()
        assert order(page) == ["delta", "beta", "epsilon", "alpha", "gamma"]
        assert aria(page) == {"worst case@0.3": "ascending"}
        page.locator("#board-1 th", has_text="score").click()  # data-value is the key, not the text
        assert order(page) == ["epsilon", "alpha", "gamma", "beta", "delta"]
        assert aria(page) == {"score": "descending"}
        page.locator("#board-1 th", has_text="clean").click()  # numeric, not lexicographic: 9.0 is smallest
        assert order(page)[-1] == "epsilon"
        entry = page.locator("#board-1 th", has_text="entry")
        entry.click()  # text: ascending first, case-insensitive
        assert order(page) == ["alpha", "beta", "delta", "epsilon", "gamma"]
        assert aria(page) == {"entry": "ascending"}
        entry.click()
        assert order(page) == ["gamma", "epsilon", "delta", "beta", "alpha"]
        assert {r["entry"]: r["cells"][0]["text"] for r in rows(page, "#board-1")} == ranks  # no renumbering
        page.locator("#board-1 th", has_text="#").click()  # not sortable
        assert order(page) == ["gamma", "epsilon", "delta", "beta", "alpha"]
        page.locator("#board-1 th", has_text="kind").focus()
        page.keyboard.press("Enter")  # sortable headers work from the keyboard too
        assert order(page) == ["alpha", "epsilon", "beta", "gamma", "delta"]  # ties: official order
        assert order(page, "#board-2") == ["x", "y"] and aria(page, "#board-2") == {}

        box = page.locator('input.board-filter[data-table="board-1"]')
        box.fill("BETA")  # case-insensitive; board-2's "beta two" is another table's business
        assert visible(page) == ["beta"] and visible(page, "#board-2") == ["x", "y"]
        box.fill("possibly")  # any text of the row
        assert visible(page) == ["beta"]
        worst.click()  # sorting keeps the filter
        assert visible(page) == ["beta"] and len(order(page)) == 5
        box.fill("zzz")
        assert visible(page) == []
        box.fill("")
        assert sorted(visible(page)) == sorted(initial)
        page.select_option('select.kind-filter[data-table="board-1"]', "standard")
        assert sorted(visible(page)) == ["delta", "gamma"]
        flagged = page.locator('input.flagged-only[data-table="board-1"]')
        flagged.check()
        assert visible(page) == ["delta"]
        page.select_option('select.kind-filter[data-table="board-1"]', "")
        assert sorted(visible(page)) == ["beta", "delta"]
        box.fill("delta")
        assert visible(page) == ["delta"]
        box.fill("")
        flagged.uncheck()
        assert sorted(visible(page)) == sorted(initial)
        page.locator('input.board-filter[data-table="board-2"]').fill("other")
        assert visible(page, "#board-2") == ["y"] and sorted(visible(page)) == sorted(initial)
        traffic.assert_clean()


# --- the real site -----------------------------------------------------------------------------------------

@dataclass
class Site:
    base: str
    out: Path
    worst: dict[str, float | None]  # entry id -> worst case (%) at the primary eps


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("site")
    store = Store(tmp / "gauntlet.db")
    primary = PROTOCOL.epsilons.index(PROTOCOL.primary_eps)
    plan = {  # entry id: (name, kind, clean correct, worst-case counts per eps)
        "alpha": ("Alpha AT", "adversarial-training", 38, [36, 32, 28, 20]),
        "evil": (EVIL, "standard", 39, [30, 26, 22, 15]),
        "beta": ("Beta reg", "regulariser", 39, [35, 25, 16, 3]),
        "gamma": ("Gamma plain", "standard", 39, [20, 10, 4, 0]),
        "delta": ("Delta partial", "standard", 37, None),
    }
    entries, ids = {}, {}
    for i, (eid, (name, kind, clean, worst)) in enumerate(plan.items()):
        ids[eid] = add_run(store, eid, name, "abcde"[i], clean, worst)
        if eid != "delta":  # delta is no longer registered: the site must cope
            entries[eid] = make_entry(eid, name, kind)
    store.replace_checks(ids["beta"], [CheckResult(
        name="bad-gradients", status="fail", value=5.0, summary="5 of 40 samples have an all-zero input gradient",
        evidence={"zero_ids": [1, 2, 3, 4, 5]}).to_row(ids["beta"])])
    out = tmp / "site"
    build_site(store, out, entries)
    worst = {eid: (None if w is None else 100.0 * w[primary] / N) for eid, (_, _, _, w) in plan.items()}
    with serve(out) as base:
        yield Site(base, out, worst)


def board_id(page: Any) -> str:
    tables = page.evaluate("() => Array.from(document.querySelectorAll('table.board')).map(t => t.id)")
    assert len(tables) == 1 and tables[0].startswith("board-"), f"want one table.board with id board-N: {tables}"
    return "#" + tables[0]


def test_site_sorts_by_worst_case(browser: Any, site: Site) -> None:
    with watched_page(browser, site.base) as (page, traffic):
        page.goto(site.base + "index.html")
        table = board_id(page)
        col = column(page, table, "worst case")
        first = rows(page, table)
        assert {r["entry"] for r in first} == set(site.worst)
        shown = {r["entry"]: number(cell(r, col)) for r in first}
        assert shown == pytest.approx(site.worst)  # the cells carry the stored figures
        header = page.locator(f"{table} thead th[data-sort]", has_text="worst case")
        for direction in ("descending", "ascending"):
            header.click()
            assert header.get_attribute("aria-sort") == direction
            assert page.locator(f"{table} thead th[aria-sort]").count() == 1
            got = [number(cell(r, col)) for r in rows(page, table)]
            present = [v for v in got if v is not None]
            assert got == present + [None]  # "–" last in both directions
            assert present == sorted(present, reverse=direction == "descending"), got
            assert len(set(present)) == 4
        traffic.assert_clean()


def test_site_filters(browser: Any, site: Site) -> None:
    with watched_page(browser, site.base) as (page, traffic):
        page.goto(site.base + "index.html")
        table = board_id(page)
        tid = table[1:]
        everything = sorted(site.worst)
        box = page.locator(f'input.board-filter[data-table="{tid}"]')
        box.fill("GAMMA plain")
        assert visible(page, table) == ["gamma"]
        box.fill("no such entry")
        assert visible(page, table) == []
        box.fill("")
        assert sorted(visible(page, table)) == everything
        kinds = page.locator(f'select.kind-filter[data-table="{tid}"]')
        assert kinds.count() == 1
        kinds.select_option("standard")
        assert sorted(visible(page, table)) == ["evil", "gamma"]
        kinds.select_option("")
        page.locator(f'input.flagged-only[data-table="{tid}"]').check()
        assert visible(page, table) == ["beta"]
        page.locator(f'input.flagged-only[data-table="{tid}"]').uncheck()
        assert sorted(visible(page, table)) == everything
        traffic.assert_clean()


def test_site_flagged_entry_and_its_page(browser: Any, site: Site) -> None:
    with watched_page(browser, site.base) as (page, traffic):
        page.goto(site.base + "index.html")
        table = board_id(page)
        flags = {r["entry"]: r["unreliable"] for r in rows(page, table)}
        assert flags == {e: ("1" if e == "beta" else "0") for e in site.worst}
        for r in rows(page, table):
            text = " ".join(c["text"] for c in r["cells"])
            assert (UNRELIABLE in text) == (r["entry"] == "beta"), r["entry"]
        row = page.locator(f'{table} tbody tr[data-entry="beta"]')
        assert UNRELIABLE in row.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
        row.locator('a[href^="runs/"]').first.click()
        page.wait_for_load_state("load")
        assert "/runs/" in page.url
        body = page.inner_text("body")
        assert "bad-gradients" in body and "5 of 40 samples have an all-zero input gradient" in body
        assert UNRELIABLE in body
        curves = page.locator("svg.curve")
        assert curves.count() >= 1
        for i in range(curves.count()):
            box = curves.nth(i).bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 50, (i, box)
        assert page.locator("svg.curve [data-series]").count() >= 1
        shot = ARTIFACTS / "entry-page-flagged.png"
        shot.unlink(missing_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert_real_png(shot)
        traffic.assert_clean()


def assert_real_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 10_000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 400, (im.format, im.size)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # not a blank page: text, tables and chart colours


def test_site_entry_name_is_inert_text(browser: Any, site: Site) -> None:
    with watched_page(browser, site.base) as (page, traffic):
        page.goto(site.base + "index.html")
        table = board_id(page)
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator(f'{table} tbody tr[data-entry="evil"]').inner_text().count(EVIL) >= 1
        assert page.locator(f"{table} tbody img").count() == 0
        page.locator(f'{table} tbody tr[data-entry="evil"] a[href^="runs/"]').first.click()
        page.wait_for_load_state("load")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert EVIL in page.inner_text("h1")
        assert EVIL in page.title()
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert not page.evaluate("Array.from(document.scripts).some(s => s.text.includes('__pwned'))")
        assert not [u for u in traffic.requests if u.rstrip("/").endswith("/x")]
        traffic.assert_clean()



# --- hostile text in every user-controlled field (issue 15) ------------------------------------------------
# Each payload, if it ever ran, would set window.xssN (or change document.title); a page is clean when no
# such flag exists, its title is the one the file declares, it holds no element or attribute the templates
# never write (no inline handler, no inline script), and every link it has is http(s) or into the site.

B64 = base64.b64encode(b"<script>top.xss19=1</script>").decode()
PAYLOADS: dict[str, str] = {  # field -> hostile text; run A belongs to the registered entry "xss"
    "run A entry name": "<script>top.xss1=1</script>",
    "entry description": "<img src=x onerror=top.xss2=1>",
    "paper title (link text)": '"><svg onload=top.xss3=1>',
    "paper authors": "</p></body><script>document.title='XSS4'</script>",
    "paper venue (link text)": '<a href="javascript:top.xss5=1">venue</a>',
    "claim attack": "</td></tr></table><script>top.xss7=1</script>",
    "claim table": '<iframe src="javascript:top.xss8=1"></iframe>',
    "claim architecture": '<object data="data:text/html,<script>top.xss9=1</script>"></object>',
    "entry notes": "<details open ontoggle=top.xss10=1>",
    "entry wraps": "<svg><script>top.xss11=1</script></svg>",
    "entry adaptive attack": "<body onload=top.xss12=1>",
    "run protocol name": "<input autofocus onfocus=top.xss13=1>",
    "run fingerprint (id attribute)": '" autofocus onfocus="top.xss14=1',
    "run budget": "<video><source onerror=top.xss15=1></video>",
    "run code version": "<marquee onstart=top.xss16=1>",
    "run package name": "<math><mtext><table><mglyph><style><img src=x onerror=top.xss17=1>",
    "run package version": "javascript:top.xss18=1",
    "run device": f'<a href="data:text/html;base64,{B64}">device</a>',
    "attack label (curve legend)": "</title></svg><script>top.xss20=1</script>",
    "attack label (data-series attribute)": '" onmouseover="top.xss21=1',
    "attack label (SVG link)": '<svg><a xlink:href="javascript:top.xss22=1"><text>x</text></a></svg>',
    "min-norm label (ECDF legend)": "<svg onload=top.xss23=1>",
    "protocol adaptive_applied": "<img src=x onerror=top.xss24=1>",
    "protocol split": "<script>document.title='XSS25'</script>",
    "protocol norm": '<iframe srcdoc="<script>parent.xss26=1</script>">',
    "check summary (badge title)": '" autofocus tabindex=0 onfocus="top.xss27=1',
    "check curve size (eps legend)": "<script>top.xss28=1</script>",
    "check evidence key (JSON)": "</pre><script>top.xss29=1</script>",
    "check evidence value (JSON)": "<img src=x onerror=top.xss30=1>",
    "check status (class attribute)": 'pass" onclick="top.xss31=1',
    "check curve size (steps legend)": "<svg/onload=top.xss32=1>",
    "check suite": "<code></code><script>top.xss33=1</script>",
    "check severity (class attribute)": 'warning" onmouseover="top.xss34=1',
    "check summary": "<img src=x onerror=top.xss35=1>",
    "run B entry id (chart titles)": "<img src=x onerror=top.xss36=1>",
    "run B detector calibration": '" onmouseover="top.xss37=1',
    "run B detector metric": "<script>top.xss38=1</script>",
    "run B weights sha256": "<x onclick=top.xss39=1>",
    "run C check summary (findings)": "<script>top.xss40=1</script>",
}
LINK_PAYLOADS = [  # stored paper URLs (never through `bench submit`): each must render as its text only
    "javascript:document.title='XSS3'",
    "JaVaScRiPt:void(top.xss41=1)",
    "java\tscript:void(top.xss42=1)",
    " javascript:void(top.xss43=1)",
    "\x01javascript:void(top.xss44=1)",
    "javascript://example.org/%0Avoid(top.xss45=1)",
    "data:text/html,<script>top.xss46=1</script>",
    "vbscript:msgbox(47)",
    "//evil.example/xss48",
    "https:evil.example/xss49",
]
FILTER_PAYLOADS = ["<img src=x onerror=top.xss50=1>", '"><script>top.xss51=1</script>', "javascript:top.xss52=1",
                   "'-top.xss53=1-'", "</tr><svg onload=top.xss54=1>"]
SITE_TAGS = {  # every element the templates and leaderboard.svg write
    "html", "head", "meta", "title", "link", "body", "script", "h1", "h2", "h3", "p", "b", "br", "code", "pre",
    "span", "a", "ul", "li", "table", "thead", "tbody", "tr", "th", "td", "input", "select", "option", "label",
    "details", "summary", "div", "figure", "svg", "g", "line", "polyline", "circle", "text"}
PAGE_JS = """() => ({
    flags: Object.keys(window).filter(k => /^xss\\d+$/.test(k)),
    title: document.title,
    tags: Array.from(new Set(Array.from(document.querySelectorAll('*'), e => e.localName))),
    handlers: Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)
        .filter(a => a.name.toLowerCase().startsWith('on')).map(a => e.localName + '[' + a.name + ']')),
    scripts: Array.from(document.scripts, s => s.getAttribute('src') || 'inline: ' + s.text.slice(0, 60)),
    text: document.documentElement.textContent,
    attrs: Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes, a => a.value)),
})"""
BAD_LINKS_JS = """() => {  // links the browser itself resolves to anything but http(s); activated, then listed
    const bad = Array.from(document.querySelectorAll('a[href], area[href]'))
        .filter(a => a.protocol !== 'http:' && a.protocol !== 'https:');
    bad.forEach(a => a.click());
    return bad.map(a => a.getAttribute('href'));
}"""


@dataclass
class HostileSite:
    base: str
    out: Path
    entry_ids: dict[str, str]  # run -> the data-entry of its row ("A", "B", "C")


def _hostile_protocol() -> tuple[str, str]:
    """The tiny protocol's run JSON with payloads as attack labels, min-norm extra, adaptive attack, split
    and norm; returns (JSON, the min-norm extra's label)."""
    d = json.loads(PROTOCOL.run_json(PROTOCOL))
    for a, key in zip(d["attacks"], ("attack label (curve legend)", "attack label (data-series attribute)",
                                     "attack label (SVG link)"), strict=True):
        a["label"] = PAYLOADS[key]
    extra = PAYLOADS["min-norm label (ECDF legend)"]
    d["extras"] = [{"label": extra, "kind": "fab", "mode": "min-norm", "params": {"norm": "L2"}, "seed": 5,
                    "eps": None, "on": "clean-correct", "max_samples": None}]
    d["adaptive_applied"] = [PAYLOADS["protocol adaptive_applied"]]
    d["split"], d["norm"] = PAYLOADS["protocol split"], PAYLOADS["protocol norm"]
    return json.dumps(d, sort_keys=True), extra


def _add_min_norm_rows(store: Store, run_id: int, fingerprint: str, label: str, clean: int) -> None:
    """Rows of a min-norm extra: the first half of the clean-correct samples broken at L2 0.5, 0.55, ..."""
    rows = [Result(run_id=run_id, fingerprint=fingerprint, attack=label, eps=0.0, sample=s, label=s % 10,
                   attacked=s < clean, success=s < clean // 2, robust_after=clean // 2 <= s < clean,
                   pred=(s + 1) % 10 if s < clean // 2 else s % 10, l2=(0.5 + 0.05 * s if s < clean // 2 else None))
            for s in range(N)]
    assert store.write_stage(Stage(run_id=run_id, fingerprint=fingerprint, attack=label, eps=0.0, chunk_start=0,
                                   chunk_stop=N, n_attacked=clean, n_broken=clean // 2, n_forward=clean,
                                   n_backward=clean, seconds=0.5, seed=5), rows, 0.5)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileSite]:
    """A site whose every user-controlled field holds a payload: a registered entry (run A, under a protocol
    record with hostile labels), an unregistered run with a hostile id and detector record (B), an "entm"
    run whose failed check reaches the findings page (C), and one registered entry per hostile paper URL."""
    tmp = tmp_path_factory.mktemp("hostile")
    store = Store(tmp / "gauntlet.db")
    P = PAYLOADS
    protocol_json, extra = _hostile_protocol()
    fingerprint = P["run fingerprint (id attribute)"]
    hostile_run = {"protocol": P["run protocol name"], "fingerprint": fingerprint, "protocol_json": protocol_json}
    entries = {"xss": make_entry(
        "xss", "XSS entry", "test-time", description=P["entry description"],
        paper=Paper(P["paper title (link text)"], P["paper authors"], P["paper venue (link text)"],
                    url=LINK_PAYLOADS[0]),
        claims=(Claim(dataset="mnist", norm="Linf", eps=PROTOCOL.primary_eps, attack=P["claim attack"],
                      clean=99.0, robust=90.0, table=P["claim table"], architecture=P["claim architecture"]),),
        notes=P["entry notes"], pretrained=None, wraps=P["entry wraps"], wrapper=lambda model, dataset: model,
        adaptive_attacks=(P["entry adaptive attack"],))}
    a = add_run(store, "xss", P["run A entry name"], "a", 39, [30, 26, 22, 15], **hostile_run,
                budget=P["run budget"], code_version=P["run code version"], device=P["run device"],
                packages=json.dumps({P["run package name"]: P["run package version"]}))
    _add_min_norm_rows(store, a, fingerprint, extra, 39)
    eps = list(PROTOCOL.epsilons)
    store.replace_checks(a, [c.to_row(a, P["check suite"]) for c in (
        CheckResult("rises-with-eps", "fail", 3.0, P["check summary (badge title)"],
                    {"curves": {"n": P["check curve size (eps legend)"], "eps": eps, "fgsm": [60.0, 40.0, 30.0, 20.0],
                                "pgd": [50.0, 30.0, 10.0, 0.0]}}),
        CheckResult("rises-with-steps", "pass", 0.0, "no rise",
                    {"curve": {"n": P["check curve size (steps legend)"], "steps": [1, 10, 100],
                               "accuracy": [80.0, 60.0, 50.0]}}),
        CheckResult("bad-gradients", P["check status (class attribute)"], None, "gradients fine",
                    {P["check evidence key (JSON)"]: P["check evidence value (JSON)"], "zero_ids": []}),
        CheckResult("loss-still-moving", "fail", 0.2, P["check summary"], {},
                    severity=P["check severity (class attribute)"]),
    )])
    b_id = P["run B entry id (chart titles)"]
    add_run(store, b_id, "Unregistered B", "b", 38, [28, 20, 12, 5], **hostile_run,
            checkpoint_sha256=P["run B weights sha256"],
            detector_json=json.dumps({"threshold": 0.5, "metric": P["run B detector metric"], "fpr": 0.05,
                                      "calibration": P["run B detector calibration"], "n_calibration": 100,
                                      "calibration_rejection_rate": 0.05}))
    c = add_run(store, "entm", "EntM", "c", 39, [25, 15, 8, 2], protocol="mnist-linf-quick-v1")
    store.replace_checks(c, [CheckResult("bad-gradients", "fail", 4.0, P["run C check summary (findings)"],
                                         {"zero_ids": [1, 2, 3, 4]}).to_row(c)])
    for i, url in enumerate(LINK_PAYLOADS[1:], 1):
        eid = f"url-{i}"
        entries[eid] = make_entry(eid, f"URL {i}", "standard",
                                  paper=Paper(f"Title {i}", "A. Author", f"Venue {i}", url=url))
        add_run(store, eid, f"URL entry {i}", "d", 37, None)
    out = tmp / "site"
    build_site(store, out, entries)
    with serve(out) as base:
        yield HostileSite(base, out, {"A": "xss", "B": b_id, "C": "entm"})


def _pages(out: Path) -> list[str]:
    return ["index.html", "findings.html"] + sorted(f"runs/{p.name}" for p in (out / "runs").glob("*.html"))


def _declared_title(path: Path) -> str:
    m = re.search(r"<title>(.*?)</title>", path.read_text(), re.S)
    assert m, path
    return html.unescape(m.group(1))


def test_hostile_site_has_no_script_link_targets(hostile: HostileSite) -> None:
    """Every href/src/xlink:href in the built HTML is http(s) or a link to a file of the site."""
    pages = _pages(hostile.out)
    assert len(pages) == 2 + 3 + len(LINK_PAYLOADS) - 1
    for name in pages:
        page = hostile.out / name
        for tag, attr, value in link_targets(page.read_text()):
            bare = re.sub(r"[\x00-\x20\x7f]", "", value).lower()  # what a browser ignores in a URL
            assert not bare.startswith(("javascript:", "data:", "vbscript:")), (name, tag, attr, value)
            if urlsplit(bare).scheme:
                assert is_http_url(value), (name, tag, attr, value)
                continue
            assert not bare.startswith(("//", "/\\")), (name, tag, attr, value)
            target = value.split("#", 1)[0]
            assert not target or (page.parent / target).resolve().is_file(), (name, tag, attr, value)
            assert (page.parent / target).resolve().is_relative_to(hostile.out.resolve()), (name, value)
    index = (hostile.out / "index.html").read_text()
    for i in range(1, len(LINK_PAYLOADS)):  # the stored hostile paper URL leaves its venue as plain text
        assert f"Venue {i}" in index and not [a for a in anchors(index) if f"Venue {i}" in a[1]]


def test_hostile_text_never_runs(browser: Any, hostile: HostileSite) -> None:
    found: set[str] = set()
    with watched_page(browser, hostile.base) as (page, traffic):
        for name in _pages(hostile.out):
            page.goto(hostile.base + name)
            page.wait_for_load_state("load")
            if name == "index.html":
                tables = page.evaluate("() => Array.from(document.querySelectorAll('table.board'), t => t.id)")
                assert len(tables) == 2
                for tid in tables:
                    box = page.locator(f'input.board-filter[data-table="{tid}"]')
                    for text in FILTER_PAYLOADS:
                        box.fill(text)  # board.js reads it as text: nothing matches, nothing runs
                        assert visible(page, f"#{tid}") == []
                    box.fill("")
                    for header in page.locator(f"#{tid} thead th[data-sort]").all():
                        header.click()  # sorting compares the cells' text and data-value, never parses them
                    page.select_option(f'select.kind-filter[data-table="{tid}"]', "test-time")
                    page.select_option(f'select.kind-filter[data-table="{tid}"]', "")
                board = f"#{tables[0]}" if page.locator(f'#{tables[0]} tr[data-entry="xss"]').count() else \
                    f"#{tables[1]}"
                box = page.locator(f'input.board-filter[data-table="{board[1:]}"]')
                for run, key in (("A", "run A entry name"), ("B", "run B entry id (chart titles)")):
                    text = PAYLOADS[key]
                    box.fill(text)  # a payload typed into the filter finds the row that shows it as text
                    assert visible(page, board) == [hostile.entry_ids[run]], run
                box.fill("")
            bad_links = page.evaluate(BAD_LINKS_JS)
            page.wait_for_timeout(100)  # a javascript: URL runs as a navigation task after the click
            got = page.evaluate(PAGE_JS)
            assert not bad_links, (name, bad_links)
            assert got["flags"] == [], (name, got["flags"])
            assert got["title"] == _declared_title(hostile.out / name), name
            assert not got["handlers"], (name, got["handlers"])
            assert set(got["tags"]) <= SITE_TAGS, (name, set(got["tags"]) - SITE_TAGS)
            assert got["scripts"] in ([], ["board.js"]), (name, got["scripts"])
            assert not re.search(r"\bXSS\d", got["title"]), name
            seen = got["text"] + "\n".join(got["attrs"])
            found |= {key for key, text in PAYLOADS.items() if text in seen}
        traffic.assert_clean()
    assert found == set(PAYLOADS), f"payloads that reached no page: {sorted(set(PAYLOADS) - found)}"

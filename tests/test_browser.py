"""The site in a real browser (headless Debian Chromium driven by Playwright), served over 127.0.0.1.

* ``test_board_js_on_contract_page``: board.js alone, on a hand-written page that follows the index's
  HTML contract (sortable ``th[data-sort]``, ``data-value`` keys, "–" last, the three filters, two tables).
* the ``test_site_*`` tests: a site built by :func:`leaderboard.build_site` from a hand-written store
  (five runs, one flagged by a failed check, one whose name is an HTML injection, one partial):
  sorting by "worst case", the filters, the flag on the row and on the entry page, the charts, a
  screenshot (``tests/artifacts/``), the injected name staying text, and no request leaving 127.0.0.1.

Chromium must be installed (``python tasks.py browser``; ``tests/browser.py`` fails naming it when it
is missing); Playwright must be installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.checks import CheckResult
from bench.storage import Store
from leaderboard import build_site
from tests import browser as browser_helpers
from tests.browser import ARGS, cell, column, import_playwright, locate_chromium, number, rows, serve, watched_page
from tests.sites import PROTOCOL, N, add_run, make_entry

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


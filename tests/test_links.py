"""Link targets from user data: only http(s) URLs pass :func:`registry.entry.is_http_url`, ``bench submit``
refuses any other link field, and the site's ``link`` filter shows anything else as plain text."""

from __future__ import annotations

from pathlib import Path

import pytest
from markupsafe import Markup

from bench.store.database import Store
from leaderboard import build_site
from leaderboard.build import link
from registry import check_links
from registry.entry import Entry, Paper, is_http_url
from registry.errors import EntryError
from tests.sites import add_run, anchors, link_targets, make_entry

GOOD = [
    "https://arxiv.org/abs/1706.06083",
    "http://example.org",
    "HTTPS://Example.org/Paper?x=1&y=<2>#sec",
    "https://proceedings.mlr.press/v97/wang19i.html",
    "https://[2001:db8::1]:8443/p",
    "https://例え.jp/論文",
]
BAD = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    " javascript:alert(1)",
    "\x01javascript:alert(1)",
    "javascript://example.org/%0Aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "//evil.example/x",
    "/\\evil.example/x",
    "https:evil.example",
    "https:/evil.example",
    "http://",
    "https:///evil.example",
    "http:\\\\evil.example",
    " https://example.org",
    "https://example.org\n",
    "https://exa mple.org",
    "https://example.org/\u2028",
    "https://example.org/\u200b",
    "https://[::1",
    "ftp://example.org/paper.pdf",
    "file:///etc/passwd",
    "paper.pdf",
    "",
]


@pytest.mark.parametrize("url", GOOD)
def test_http_urls_pass(url: str) -> None:
    assert is_http_url(url)


@pytest.mark.parametrize("url", BAD)
def test_anything_else_is_refused(url: str) -> None:
    assert not is_http_url(url)


def test_non_strings_are_refused() -> None:
    assert not any(is_http_url(v) for v in (None, 1, b"https://example.org", ["https://example.org"]))


def _entry(url: str) -> Entry:
    return Entry(id="mine", name="Mine", description="d", kind="standard", architectures={"mnist": "cnn4"},
                 paper=Paper("T", "A", "V", url=url), pretrained={"mnist": lambda: None})  # type: ignore[dict-item]


def test_check_links_names_the_entry_and_the_field_on_one_line() -> None:
    for url in BAD[:-1]:  # "" means no link and is allowed
        with pytest.raises(EntryError) as err:
            check_links(_entry(url))
        message = str(err.value)
        assert "'mine'" in message and "paper.url" in message and "http" in message
        assert len(message.splitlines()) == 1, message
    long = "javascript:" + "x" * 500
    with pytest.raises(EntryError, match="…") as err:
        check_links(_entry(long))
    assert len(str(err.value)) < 200
    for url in GOOD + [""]:
        check_links(_entry(url))


def test_builtin_entries_links_are_http() -> None:
    """Every built-in entry's links pass the submit rule, so the site shows them all as links."""
    from registry import ALL_BUILTIN

    assert sum(bool(e.paper.url) for e in ALL_BUILTIN) >= 5
    for e in ALL_BUILTIN:
        check_links(e)


def test_link_filter_renders_only_http_targets() -> None:
    assert link("<b>T</b>", 'https://example.org/?q="x"&y=1') == Markup(
        '<a href="https://example.org/?q=&#34;x&#34;&amp;y=1">&lt;b&gt;T&lt;/b&gt;</a>')
    for url in BAD:
        shown = link("<b>T</b>", url)
        assert shown == Markup("&lt;b&gt;T&lt;/b&gt;"), url
        assert "<a" not in shown and "href" not in shown


def test_a_stored_javascript_paper_url_renders_as_plain_text(tmp_path: Path) -> None:
    """An entry that never went through ``bench submit`` (already stored, or a built-in edited by hand)
    keeps its javascript: URL; the site shows its paper's venue and title as text, with no link."""
    store = Store(tmp_path / "gauntlet.db")
    bad = "javascript:document.title='XSS3'"
    entries = {
        "old": make_entry("old", "Old entry", "standard",
                          paper=Paper("Old paper", "A. Author", "Old venue", url=bad)),
        "good": make_entry("good", "Good entry", "standard",
                           paper=Paper("Good paper", "B. Author", "Good venue", url="https://example.org/good")),
    }
    for i, eid in enumerate(entries):
        add_run(store, eid, entries[eid].name, "ab"[i], 38, [30, 20, 10, 0])
    index = build_site(store, tmp_path / "site", entries)
    pages = {p.name: p.read_text() for p in [index, *sorted((tmp_path / "site" / "runs").glob("*.html"))]}
    assert len(pages) == 3
    for name, html in pages.items():
        assert not [t for t in link_targets(html) if "script" in t[2].lower()], name
        assert "XSS3" not in html, name
    assert ("https://example.org/good", "Good venue") in anchors(pages["index.html"])
    assert "Old venue" in pages["index.html"]
    assert not [a for a in anchors(pages["index.html"]) if "Old venue" in a[1]]
    old = next(html for name, html in pages.items() if name.startswith("old--"))
    assert "Paper: Old paper — A. Author, Old venue." in old
    assert not [a for a in anchors(old) if "Old paper" in a[1]]
    good = next(html for name, html in pages.items() if name.startswith("good--"))
    assert ("https://example.org/good", "Good paper") in anchors(good)


def test_the_json_export_carries_only_http_links(tmp_path: Path) -> None:
    """Export consumers may render ``link`` as a link: a stored javascript: URL is left out, an https one kept."""
    import json

    from bench.report.export import export

    store = Store(tmp_path / "gauntlet.db")
    entries = {"old": make_entry("old", "Old entry", "standard",
                                 paper=Paper("Old", "A", "V", url="javascript:document.title='XSS3'")),
               "good": make_entry("good", "Good entry", "standard",
                                  paper=Paper("Good", "B", "V", url="https://example.org/good"))}
    for i, eid in enumerate(entries):
        add_run(store, eid, entries[eid].name, "ab"[i], 38, [30, 20, 10, 0])
    links = {json.loads(p.read_text())["name"]: json.loads(p.read_text())["link"]
             for p in export(store, entries, tmp_path / "out", "json")}
    assert links == {"Old entry": None, "Good entry": "https://example.org/good"}

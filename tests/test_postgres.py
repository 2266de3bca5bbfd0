"""The CLI on a real PostgreSQL server (bench/store/throwaway_pg.py): every command that touches the store takes
``--db postgresql+psycopg://...`` and gives the rows SQLite gives, exports included."""

from __future__ import annotations

import re
from pathlib import Path

from tests.sites import site_body
from tests.test_cli import SUBMISSION, invoke

ARGS = ("--budget", "tiny", "--protocol", "mnist-linf-tiny-v1")


def test_every_store_command_on_postgresql_gives_the_sqlite_rows(tmp_path: Path, postgres, workspace: Path) -> None:
    sub = tmp_path / "sub.py"
    sub.write_text(SUBMISSION)
    assert invoke("submit", str(sub)).exit_code == 0
    assert invoke("train", "my-cnn4", "--budget", "tiny").exit_code == 0
    pg, lite = postgres.new_database(), str(tmp_path / "lite.db")
    exports = {}
    for name, db in (("postgresql", pg), ("sqlite", lite)):
        # a slice, then the rest (resume), then the checks again, the site, the entry page, the exports
        first = invoke("evaluate", "my-cnn4", *ARGS, "--stop", "20", "--db", db)
        assert first.exit_code == 0 and "20/40 samples" in first.output, first.output
        rest = invoke("evaluate", "my-cnn4", *ARGS, "--db", db)
        assert rest.exit_code == 0 and "40/40 samples" in rest.output, rest.output
        check = invoke("check", "my-cnn4", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1", "--db", db)
        assert check.exit_code == 0 and "checks of run 1" in check.output, check.output
        shown = invoke("show", "my-cnn4", "--db", db)
        assert shown.exit_code == 0 and "mnist-linf-tiny-v1 run 1" in shown.output, shown.output
        site = invoke("leaderboard", "--db", db, "--out", str(tmp_path / f"site-{name}"))
        assert site.exit_code == 0, site.output
        for fmt in ("csv", "json"):
            out = tmp_path / f"{fmt}-{name}"
            assert invoke("export", "--format", fmt, "--db", db, "--out", str(out)).exit_code == 0
            exports[(name, fmt)] = {p.name: p.read_text() for p in sorted(out.iterdir())}
    csv = exports[("postgresql", "csv")]
    assert csv == exports[("sqlite", "csv")] and len(next(iter(csv.values())).splitlines()) == 1 + 40 * 13
    assert exports[("postgresql", "json")].keys() == exports[("sqlite", "json")].keys()
    assert "rows in <code>postgresql database t" in (tmp_path / "site-postgresql" / "index.html").read_text()
    index = {n: (tmp_path / f"site-{n}" / "index.html").read_text() for n in ("postgresql", "sqlite")}
    assert untimed(index["postgresql"]) == untimed(index["sqlite"])  # the same board


def untimed(page: str) -> str:
    """A page without its source line and its measured times (the two runs took different seconds)."""
    return re.sub(r"[0-9.]+(&nbsp;| )(s|min)\b", "", site_body(page))


def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path, workspace: Path) -> None:
    result = invoke("export", "--db", f"postgresql+psycopg://nobody@/x?host={tmp_path}&connect_timeout=2")
    assert result.exit_code == 1 and result.output.startswith("error: cannot open database")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output

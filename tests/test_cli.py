"""The CLI through typer's CliRunner: commands work, and bad input is one line with exit != 0."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.checks.suite import CHECKS, suite_for
from bench.cli.app import app
from bench.protocol.protocols import get_protocol

runner = CliRunner()

SUBMISSION = '''
from registry import Entry, Paper
from defenses.training import Budget, Recipe

ENTRY = Entry(
    id="my-cnn4",
    name="<script>alert(1)</script> tiny CNN",
    description="A user's CE-trained four-layer CNN.",
    paper=Paper("Some paper", "Someone", "arXiv 2026"),
    kind="standard",
    architectures={"mnist": "cnn4"},
    recipe=Recipe("ce", {}, {"mnist": {"tiny": Budget(epochs=1, batch_size=64, lr=2e-3, optimizer="adam",
                                                      train_samples=512)}}),
)
'''


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:")
    for f in fragments:
        assert f in text


def stored_checks(db: Path, run_id: int) -> list[tuple[str, str, str, str, str]]:
    """(name, severity, status, suite, summary) of a run's stored check rows, in stored order."""
    with sqlite3.connect(db) as con:
        return con.execute("select name, severity, status, suite, summary from checks where run_id = ? order by id",
                           (run_id,)).fetchall()


def assert_checks_ran(output: str, db: Path, run_id: int, protocol: str) -> None:
    """The command's checks line names the run and reports the verdict of the rows it stored: every
    check of the current suite, under the current suite id, each failed one listed."""
    rows = stored_checks(db, run_id)
    assert [r[0] for r in rows] == list(CHECKS)
    assert {r[3] for r in rows} == {suite_for(get_protocol(protocol).canonical())[1]}
    line = re.search(rf"^checks of run {run_id} \(\d+ s\): (.*)$", output, re.M)
    assert line, output
    unreliable = any(sev == "unreliable" and status == "fail" for _, sev, status, _, _ in rows)
    assert line.group(1) == ("evaluation possibly unreliable" if unreliable else "no unreliable flag")
    words = " ".join(output.split())  # a long report line may be wrapped
    for name, severity, status, _, summary in rows:
        assert (" ".join(f"[{severity}] {name}: {summary}".split()) in words) == (status == "fail"), name


def test_entries_lists_builtins_with_papers(workspace: Path) -> None:
    result = invoke("entries")
    assert result.exit_code == 0
    for entry_id in ("standard", "madry-pgd-at", "pat", "trades", "mart"):
        assert entry_id in result.output


@pytest.mark.parametrize("args,fragment", [
    (("train", "nope"), "unknown entry 'nope'"),
    (("train", "standard", "--dataset", "svhn"), "unknown dataset"),
    (("train", "standard", "--budget", "huge"), "no 'huge' budget"),
    (("evaluate", "standard", "--protocol", "nope"), "unknown protocol"),
    (("evaluate", "standard"), "no checkpoint"),
    (("show", "nope"), "unknown entry"),
    (("submit", "missing.py"), "not found"),
    (("train", "standard", "--device", "cuda:0"), "cuda"),
])
def test_bad_input_is_one_line_and_nonzero(workspace: Path, args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(invoke(*args), fragment)


def test_missing_data_dir_is_reported(workspace: Path, tmp_path: Path) -> None:
    assert_one_line_error(invoke("train", "standard", "--budget", "tiny", "--data-dir", str(tmp_path / "none")),
                          str(tmp_path / "none"))


def test_train_evaluate_show_leaderboard_and_corrupt_checkpoint(workspace: Path, tmp_path: Path) -> None:
    result = invoke("train", "standard", "--budget", "tiny")
    assert result.exit_code == 0, result.output
    again = invoke("train", "standard", "--budget", "tiny")
    assert "reused" in again.output
    ckpt = next((workspace / "checkpoints").glob("standard--mnist--tiny--*.safetensors"))
    result = invoke("evaluate", "standard", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1")
    assert result.exit_code == 0, result.output
    assert "clean" in result.output and "checks of run 1 (" in result.output
    db = workspace / "gauntlet.db"
    assert_checks_ran(result.output, db, 1, "mnist-linf-tiny-v1")
    result = invoke("show", "standard")
    assert result.exit_code == 0 and "mnist-linf-tiny-v1" in result.output
    result = invoke("leaderboard", "--out", str(tmp_path / "site"))
    assert result.exit_code == 0 and (tmp_path / "site" / "index.html").is_file()
    # the checks ran with the evaluation; `bench check` re-runs them (replacing stale rows, here marked
    # as made by another suite); exports write one file per run
    with sqlite3.connect(db) as con:
        con.execute("update checks set suite = 'checks-v0-quick:stale', summary = 'stale'")
    result = invoke("check", "standard", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1")
    assert result.exit_code == 0 and "checks of run 1 (" in result.output, result.output
    assert_checks_ran(result.output, db, 1, "mnist-linf-tiny-v1")
    assert "stale" not in {r[4] for r in stored_checks(db, 1)}
    assert_one_line_error(invoke("check", "trades", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1"),
                          "no checkpoint")
    for fmt in ("json", "csv"):
        result = invoke("export", "--format", fmt, "--out", str(tmp_path / "export"))
        assert result.exit_code == 0 and len(list((tmp_path / "export").glob(f"*.{fmt}"))) == 1
    assert_one_line_error(invoke("export", "--format", "xml", "--out", str(tmp_path / "export")), "format")
    # a damaged checkpoint is a one-line error, and stored results survive it
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    assert_one_line_error(invoke("evaluate", "standard", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1"),
                          "corrupt")
    with sqlite3.connect(workspace / "gauntlet.db") as con:
        assert con.execute("select count(*) from results").fetchone()[0] == 40 * (1 + 4 * 3)


def test_bad_database_url_is_one_line(workspace: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.sqlite"
    bad.write_text("garbage " * 100)
    assert_one_line_error(invoke("leaderboard", "--db", str(bad)), "database")


def test_submit_train_evaluate_show_a_user_entry(workspace: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(SUBMISSION)
    result = invoke("submit", str(path))
    assert result.exit_code == 0, result.output
    assert "my-cnn4" in invoke("entries").output
    assert invoke("train", "my-cnn4", "--budget", "tiny").exit_code == 0
    result = invoke("evaluate", "my-cnn4", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1")
    assert result.exit_code == 0, result.output
    assert_checks_ran(result.output, workspace / "gauntlet.db", 1, "mnist-linf-tiny-v1")
    assert "my-cnn4" in invoke("show", "my-cnn4").output
    site = tmp_path / "site"
    assert invoke("leaderboard", "--out", str(site)).exit_code == 0
    html = (site / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    # submitting it again updates it; a built-in id or a broken file is refused in one line
    assert "updated" in invoke("submit", str(path)).output
    clash = tmp_path / "clash.py"
    clash.write_text(SUBMISSION.replace('id="my-cnn4"', 'id="standard"'))
    assert_one_line_error(invoke("submit", str(clash)), "clashes with a built-in")
    broken = tmp_path / "broken.py"
    broken.write_text("ENTRY = 1/0\n")
    assert_one_line_error(invoke("submit", str(broken)), "ZeroDivisionError")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert_one_line_error(invoke("submit", str(empty)), "must define ENTRY")


@pytest.mark.parametrize("url", ["javascript:document.title='XSS3'", "java\tscript:alert(1)", " javascript:alert(1)",
                                 "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)", "//evil.example/x"])
def test_submit_refuses_a_link_that_is_not_http(workspace: Path, tmp_path: Path, url: str) -> None:
    """A paper URL the site would render as a link must be http(s): anything else is one error line naming
    the field, and nothing is registered."""
    path = tmp_path / "mine.py"
    path.write_text(SUBMISSION.replace('"arXiv 2026")', f'"arXiv 2026", url={url!r})'))
    assert_one_line_error(invoke("submit", str(path)), "'my-cnn4'", "paper.url", "http")
    assert not list((workspace / "submissions").glob("*.py"))
    assert "my-cnn4" not in invoke("entries").output


def test_submit_accepts_an_https_paper_url(workspace: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(SUBMISSION.replace('"arXiv 2026")', '"arXiv 2026", url="https://arxiv.org/abs/1706.06083")'))
    result = invoke("submit", str(path))
    assert result.exit_code == 0, result.output
    assert [p.name for p in (workspace / "submissions").glob("*.py")] == ["my-cnn4.py"]


def test_python_dash_m_bench_works() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and re.search(r"demo", out.stdout)

"""`bench demo` end to end on the tiny budget, and the site's figures against the raw database."""

from __future__ import annotations

import json
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

from typer.testing import CliRunner

from bench.cli.app import app


class CellParser(HTMLParser):
    """Collects (entry id, css classes, text) for each cell of the index tables."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []
        self.row_entry = ""
        self.cls: str | None = None
        self.buf = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-entry" in a:
            self.row_entry = a["data-entry"] or ""
        if tag == "td":
            self.cls, self.buf = a.get("class") or "", ""

    def handle_data(self, data):
        if self.cls is not None:
            self.buf += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cls is not None:
            self.cells.append((self.row_entry, self.cls, self.buf.strip()))
            self.cls = None


def test_demo_end_to_end_tiny(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    # two worker processes: training, evaluation slices and checks side by side (bench.orchestration.pool)
    result = CliRunner().invoke(app, ["demo", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1",
                                      "--home", str(home), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "16 tasks on 2 worker processes" in result.output
    index = home / "site" / "index.html"
    assert f"leaderboard: {index}" in result.output.replace("\n", "")
    html = index.read_text()
    parser = CellParser()
    parser.feed(html)
    with sqlite3.connect(home / "gauntlet.db") as con:
        runs = dict(con.execute("select entry_id, id from runs").fetchall())
        assert set(runs) == {"standard", "madry-pgd-at", "trades", "mart"}
        # tiny-budget models are flagged: their check tasks escalated them in the workers
        escalated = [e for e, j in con.execute("select entry_id, escalation_json from runs") if j]
        assert escalated and html.count('class="badge escalated"') == len(escalated)
        for entry_id, run_id in runs.items():
            # both chunk slices of every stage were stored, into one run per entry
            stages = con.execute("select attack, eps, group_concat(chunk_start) from stages where run_id=? "
                                 "group by attack, eps", (run_id,)).fetchall()
            assert stages and all(sorted(c.split(",")) == ["0", "20"] for _, _, c in stages), stages
            assert con.execute("select count(*) from results where run_id=? and attack='clean'",
                               (run_id,)).fetchone()[0] == 40
            clean = con.execute("select avg(robust_after) * 100 from results where run_id=? and attack='clean'",
                                (run_id,)).fetchone()[0]
            escalation = con.execute("select escalation_json from runs where id=?", (run_id,)).fetchone()[0]

            def last(eps: float, escalation: str | None = escalation) -> str:
                """The stage whose flags are the worst case at eps: the cascade's last, or the escalation's."""
                stages = json.loads(escalation)["stages"] if escalation else []
                return ([s["label"] for s in stages if s["eps"] == eps] or ["pgd-cw"])[-1]

            worst = con.execute("select avg(robust_after) * 100 from results where run_id=? and attack=? "
                                "and eps=0.3", (run_id, last(0.3))).fetchone()[0]
            cells = {cls.split()[-1]: text for e, cls, text in parser.cells if e == entry_id and cls}
            assert cells["clean"] == f"{clean:.1f}"
            assert cells["worst"].split()[0] == f"{worst:.1f}"  # an unreliable entry adds "ranked at ..."
            per_eps = [t for e, cls, t in parser.cells if e == entry_id and cls.endswith("worst-eps")]
            want = [con.execute("select avg(robust_after) * 100 from results where run_id=? and attack=? "
                                "and eps=?", (run_id, last(eps), eps)).fetchone()[0] for eps in (0.1, 0.2, 0.3, 0.4)]
            assert per_eps == [f"{w:.1f}" for w in want]
            page = next((home / "site" / "runs").glob(f"{entry_id}--*.html")).read_text()
            assert re.search(r"protocol fingerprint", page)
    # running the demo again, in one process, reuses checkpoints and stored rows
    again = CliRunner().invoke(app, ["demo", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1",
                                     "--home", str(home), "--jobs", "1"])
    assert again.exit_code == 0 and again.output.count("reused:") == 4  # checkpoints
    assert again.output.count(": reused (") == 4  # stored sanity checks of the same suite
    with sqlite3.connect(home / "gauntlet.db") as con:  # every run has every check, with its evidence
        per_run = con.execute("select run_id, count(*), sum(evidence_json like '{%') from checks group by run_id")
        assert sorted(per_run.fetchall()) == [(r, 11, 11) for r in sorted(runs.values())]
    site = (home / "site" / "findings.html").read_text()
    assert "MART beats TRADES under PGD-20" in site

"""Kill a real `bench evaluate` process with SIGKILL mid-run; the rerun ends with the reference rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from bench.cli.app import app

ROWS = "select attack, eps, sample, attacked, success, robust_after, pred, round(linf, 6) from results order by 1, 2, 3"


def _bench(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args, "--home", str(home)]


def test_sigkill_then_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for home in (ref, killed):
        assert runner.invoke(app, ["train", "madry-pgd-at", "--budget", "tiny", "--home", str(home)]).exit_code == 0
    args = ("evaluate", "madry-pgd-at", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1")
    assert subprocess.run(_bench(ref, *args), capture_output=True, timeout=600).returncode == 0
    proc = subprocess.Popen(_bench(killed, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = killed / "gauntlet.db"
    deadline = time.time() + 300
    stages = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    stages = con.execute("select count(*) from stages").fetchone()[0]
            except sqlite3.OperationalError:
                stages = 0
            if stages >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "evaluation finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        partial = con.execute("select count(*) from results").fetchone()[0]
    assert 0 < partial < 40 * 13
    assert subprocess.run(_bench(killed, *args), capture_output=True, timeout=600).returncode == 0
    with sqlite3.connect(ref / "gauntlet.db") as a, sqlite3.connect(db) as b:
        assert a.execute(ROWS).fetchall() == b.execute(ROWS).fetchall()
        assert b.execute("select count(*) from results").fetchone()[0] == 40 * 13

"""Kill a real `bench evaluate` process with SIGKILL mid-run; the rerun ends with the reference rows.

The checkpoint is trained once and copied to the second workspace (training is deterministic, and a
second run of `bench train` there must reuse it). The `bench` subprocesses use as many torch threads
as the tests do (``GAUNTLET_TEST_THREADS``, see conftest.py): on a busy two-core machine, two
spin-waiting OpenMP threads per process made each evaluation several times slower. The reference
evaluation runs in the test's process and skips the sanity checks, since only its rows are compared; the
resumed one runs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from bench.cli.app import app

ROWS = "select attack, eps, sample, attacked, success, robust_after, pred, round(linf, 6) from results order by 1, 2, 3"


def _bench(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args, "--home", str(home)]


def _env() -> dict[str, str]:
    """The environment of a `bench` subprocess: this process's torch thread count."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_sigkill_then_resume(tmp_path: Path) -> None:
    runner = CliRunner()
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    train = ["train", "madry-pgd-at", "--budget", "tiny", "--home"]
    assert runner.invoke(app, [*train, str(ref)]).exit_code == 0
    shutil.copytree(ref, killed)
    again = runner.invoke(app, [*train, str(killed)])
    assert again.exit_code == 0 and "reused" in again.output
    args = ("evaluate", "madry-pgd-at", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1", "--no-escalation")
    reference = runner.invoke(app, [*args, "--no-checks", "--home", str(ref)])  # in this process: no start-up
    assert reference.exit_code == 0, reference.output
    proc = subprocess.Popen(_bench(killed, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
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
    assert subprocess.run(_bench(killed, *args), capture_output=True, timeout=600, env=_env()).returncode == 0
    with sqlite3.connect(ref / "gauntlet.db") as a, sqlite3.connect(db) as b:
        assert a.execute(ROWS).fetchall() == b.execute(ROWS).fetchall()
        assert b.execute("select count(*) from results").fetchone()[0] == 40 * 13

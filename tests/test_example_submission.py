"""A model nobody here wrote: pyautoattack's CIFAR-10 ResNet-18, submitted and evaluated (slow)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import REPO_ROOT
from bench.cli.app import app


@pytest.mark.slow
def test_pyautoattack_resnet18_submission(workspace: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["submit", str(REPO_ROOT / "examples" / "pyautoattack_resnet18.py")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "pyautoattack-resnet18", "--protocol", "cifar10-linf-quick-v1",
                                 "--no-escalation"])  # a CPU budget: CIFAR-10 escalation would train surrogates
    assert result.exit_code == 0, result.output
    with sqlite3.connect(workspace / "gauntlet.db") as con:
        clean = con.execute("select avg(robust_after) from results where attack='clean'").fetchone()[0]
        robust = con.execute("select avg(robust_after) from results where attack='autoattack'").fetchone()[0]
    assert 0.92 <= clean <= 0.96  # the model's known accuracy (94% on these images)
    assert robust == 0.0

#!/usr/bin/env python3
"""Developer tasks: ``python tasks.py install|demo|test|test-slow|lint|perf``.

Plain Python (no task-runner dependency) so it works on a fresh machine with only Python 3.11.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def install() -> None:
    """Create .venv and install the project with its dev extras (newest torch + torchvision pair)."""
    if not (BIN / "python").exists():
        sh(sys.executable, "-m", "venv", str(VENV))
    sh(str(BIN / "pip"), "install", "-q", "--upgrade", "pip")
    sh(str(BIN / "pip"), "install", "-q", "-e", ".[dev]")


def demo() -> None:
    sh(str(BIN / "bench"), "demo")


def test() -> None:
    sh(str(BIN / "python"), "-m", "pytest", "-q")


def test_slow() -> None:
    sh(str(BIN / "python"), "-m", "pytest", "-q", "-m", "slow")


def lint() -> None:
    sh(str(BIN / "ruff"), "check", ".")


def perf() -> None:
    sh(str(BIN / "bench"), "perf")


TASKS = {"install": install, "demo": demo, "test": test, "test-slow": test_slow, "lint": lint, "perf": perf}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TASKS:
        print(f"usage: python tasks.py {{{'|'.join(TASKS)}}}", file=sys.stderr)
        sys.exit(2)
    os.chdir(ROOT)
    TASKS[sys.argv[1]]()

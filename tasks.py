#!/usr/bin/env python3
"""Developer tasks: ``python tasks.py TASK`` (``TASKS`` below: install, browser, demo, test, lint, records, ...).

Plain Python (no task-runner dependency) so it works on a fresh machine with only Python 3.11.
"""

from __future__ import annotations

import json
import os
import shutil
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


CHROMIUM = Path("/usr/bin/chromium")


def browser() -> None:
    """Install Debian's ``chromium`` with apt-get when /usr/bin/chromium is missing (the browser tests need it).

    The browser tests drive this system package through Playwright, never ``playwright install``:
    the test machines reach only package registries. Installing is a setup step, kept out of the test
    fixtures so a test run never changes the machine; apt-get needs root (or sudo).
    """
    if CHROMIUM.exists():
        print(f"{CHROMIUM} is already installed", flush=True)
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"{CHROMIUM} is missing and apt-get is not available: install Chromium by hand")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            sys.exit(f"{CHROMIUM} is missing: run `python tasks.py browser` as root (apt-get needs it)")
        prefix = ["sudo", "-E"]
    os.environ["DEBIAN_FRONTEND"] = "noninteractive"
    sh(*prefix, "apt-get", "update", "-q")
    sh(*prefix, "apt-get", "install", "-y", "-q", "chromium")
    if not CHROMIUM.exists():
        sys.exit(f"apt-get installed chromium but {CHROMIUM} is still missing")
    print(f"installed {CHROMIUM}", flush=True)


def demo() -> None:
    sh(str(BIN / "bench"), "demo")


def test() -> None:
    sh(str(BIN / "python"), "-m", "pytest", "-q")


def test_slow() -> None:
    """The slow tests but the full regression set (hours: ``pytest -m regression``), as .ci/run."""
    sh(str(BIN / "python"), "-m", "pytest", "-q", "-n", "0", "-m", "slow and not regression")


def lint() -> None:
    """ruff on everything, mypy on bench's packages (as .ci/run)."""
    sh(str(BIN / "ruff"), "check", ".")
    sh(str(BIN / "mypy"))


def perf() -> None:
    sh(str(BIN / "bench"), "perf")


def perf_demo() -> None:
    """``bench demo`` in one process (--jobs 1) and on its process pool (one per CPU), side by side.

    Each run trains and evaluates from scratch in its own temporary workspace. Extra demo arguments
    come from $PERF_DEMO_ARGS (e.g. "--entries standard,trades" for a shorter comparison).
    """
    import shlex
    import tempfile
    import time

    extra = shlex.split(os.environ.get("PERF_DEMO_ARGS", ""))
    wall = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in ("1", "0"):
            t0 = time.perf_counter()
            sh(str(BIN / "bench"), "demo", "--home", f"{tmp}/jobs-{jobs}", "--jobs", jobs, *extra)
            wall[jobs] = time.perf_counter() - t0
    print(f"bench demo {' '.join(extra)}: one process {wall['1']:.0f} s, process pool {wall['0']:.0f} s, "
          f"pool speed-up {wall['1'] / wall['0']:.2f}x", flush=True)


def perf_scale() -> None:
    """Ray's overhead on the demo, stage writes on SQLite vs PostgreSQL, the cascade vs every attack on every
    sample: ratios measured side by side (``bench/benchmarks/perf_scale.py``; needs the ray extra)."""
    sh(str(BIN / "python"), "-m", "bench.benchmarks.perf_scale")


def gpu_check() -> None:
    """The prepared GPU check (``bench/benchmarks/gpu_check.py``): run it on a machine with CUDA."""
    sh(str(BIN / "python"), "-m", "bench.benchmarks.gpu_check", *sys.argv[2:])


def records() -> None:
    """Make the missing results of record (``bench.report.record.missing_records``) one after another,
    into results/, with one torch thread; ``--list`` only lists them. The workspace ``.records-home``
    keeps the checkpoints and every stored stage, so a run stopped mid-way resumes where it stopped."""
    listing = subprocess.run([str(BIN / "python"), "-c", "import json; from bench.report.record import "
                              "missing_records; print(json.dumps(missing_records('results')))"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout
    todo = sorted(json.loads(listing), key=lambda t: t[1] == "pnml")  # pnml takes hours: last
    print(f"{len(todo)} record(s) missing: " + ", ".join(f"{e} ({p})" for p, e in todo), flush=True)
    if "--list" in sys.argv[2:]:
        return
    for protocol, entry in todo:
        sh(str(BIN / "bench"), "record", entry, "--protocol", protocol, "--budget", "quick", "--seed", "0",
           "--out", "results", "--home", str(ROOT / ".records-home"))


TASKS = {"install": install, "browser": browser, "demo": demo, "test": test, "test-slow": test_slow, "lint": lint,
         "perf": perf, "perf-demo": perf_demo, "perf-scale": perf_scale, "gpu-check": gpu_check, "records": records}

if __name__ == "__main__":
    extra_ok = {"gpu-check": True, "records": sys.argv[2:] == ["--list"]}
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS or (len(sys.argv) > 2 and not extra_ok.get(sys.argv[1])):
        print(f"usage: python tasks.py {{{'|'.join(TASKS)}}}", file=sys.stderr)
        sys.exit(2)
    os.chdir(ROOT)
    TASKS[sys.argv[1]]()

"""The plan on a real local Ray cluster (2 CPUs): the local pool's rows, retried tasks, shipped artifacts.

Ray is an optional extra: without it these tests are skipped with the reason, unless
``GAUNTLET_REQUIRE_RAY=1`` (set by CI), which fails them instead. Each test starts its own local
cluster through ``run_ray`` (a few seconds), so that the environment variables it sets reach the workers.
The cluster tests are marked slow (about 30 s each, the quick demo minutes): ``.ci/run`` runs them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench import api
from bench.cli.app import app
from bench.errors import BenchError
from bench.orchestration.ray_executor import KILL_ONCE, WORKER_HOME, Artifact, install
from bench.store.database import Store
from tests.test_cli import SUBMISSION

TINY = {"protocol": "mnist-linf-tiny-v1", "budget": "tiny"}


@pytest.fixture
def ray_needed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("GAUNTLET_REQUIRE_RAY") == "1":
            pytest.fail("Ray is not installed: pip install -e '.[ray]'")
        pytest.skip("Ray is not installed: pip install -e '.[ray]'")


def rows(db: str) -> list[tuple]:
    """Every per-sample row of every run, keyed by entry (run ids, and the checkpoint files' sha256, which
    cover metadata such as training seconds, may differ between workspaces and stores)."""
    st = Store(db)
    out = []
    for run in st.runs():
        out += [(run.entry_id, r.attack, r.eps, r.sample, r.attacked, r.success, r.robust_after, r.pred, r.detail)
                for r in st.results(run.id)]
    return sorted(out, key=repr)


def weights(home: Path) -> dict[str, str]:
    """The sha256 of the weights (not the file) of every checkpoint in a workspace."""
    from safetensors.torch import load_file

    from bench.models.checkpoints import state_sha256

    return {p.name: state_sha256(load_file(p)) for p in sorted((home / "checkpoints").glob("*.safetensors"))}


def stage_keys(db: str) -> list[tuple]:
    st = Store(db)
    return sorted((run.entry_id, s.attack, s.eps, s.chunk_start) for run in st.runs() for s in st.stages(run.id))


def submitted(home: Path) -> Path:
    """A workspace with the tiny CNN submission."""
    sub = home.parent / f"{home.name}-sub.py"
    sub.write_text(SUBMISSION)
    api.submit(sub, home=home)
    return home


@pytest.mark.slow
@pytest.mark.parametrize("entries, budget, protocol, rows_per_entry", [
    (["standard", "my-cnn4"], "tiny", "mnist-linf-tiny-v1", 40 * 13),
    (["standard", "madry-pgd-at"], "quick", "mnist-linf-quick-v1", None),
], ids=["tiny", "quick"])
def test_ray_demo_gives_the_local_pools_rows_on_postgresql(tmp_path: Path, postgres, ray_needed,
                                                           monkeypatch: pytest.MonkeyPatch, entries: list[str],
                                                           budget: str, protocol: str,
                                                           rows_per_entry: int | None) -> None:
    """Two entries, trained and evaluated on a local 2-CPU Ray cluster with PostgreSQL as the store,
    one torch thread per task: the rows of the local pool (two one-thread processes, SQLite), each
    run in its own workspace (so each trains its own checkpoints)."""
    monkeypatch.setattr("bench.api.usable_cpus", lambda: 2)  # the pool's two processes: one thread each
    said: list[tuple[str, int]] = []
    pool = api.demo(entries, jobs_=2, home=submitted(tmp_path / "pool"), budget=budget, protocol=protocol,
                    on_start=lambda n, where, threads: said.append((where, threads)))
    assert said == [("on 2 worker processes", 1)]
    pg = postgres.new_database()
    done: list[str] = []
    home = submitted(tmp_path / "ray")
    on_ray = api.demo(entries, executor="ray", home=home, db=pg, task_threads=1, budget=budget, protocol=protocol,
                      on_done=lambda task, message, seconds: done.append(f"{task.label()}: {message}"))
    plan = api.demo_plan(entries, protocol, budget, home=home)
    assert sorted(d.split(":")[0] for d in done) == sorted(t.label().split(":")[0] for t in plan)
    trains = [d.split(": ")[1] for d in done if d.startswith("train")]
    assert trains == ["trained"] * len(trains) and len(trains) >= 2, done  # trained on Ray
    pool_db = str(tmp_path / "pool" / "gauntlet.db")
    assert weights(home) == weights(tmp_path / "pool") and len(weights(home)) == len(trains)  # trained alike
    assert rows(pg) == rows(pool_db) and len(rows(pg)) >= 2 * (rows_per_entry or 200)
    for entry in entries:
        assert on_ray.reports[entry].worst_case == pool.reports[entry].worst_case
    assert on_ray.site.is_file()


@pytest.mark.slow
def test_a_worker_killed_mid_task_is_retried_without_losing_or_doubling_rows(
        tmp_path: Path, ray_needed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first evaluation slice's worker dies (``os._exit``) after three stored stages; Ray runs the
    task again, which resumes: the rows of an uninterrupted run, each stage once."""
    home = tmp_path / "ws"
    reference = api.demo(["standard"], jobs_=1, home=home, db=str(tmp_path / "ref.db"), **TINY)
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE, f"evaluate standard [0:20]|{marker}")
    db = str(tmp_path / "ray.db")
    report = api.evaluate("standard", TINY["protocol"], store=db, home=home, budget="tiny", executor="ray")
    assert marker.read_text().startswith("killed evaluate standard [0:20] after")
    assert rows(db) == rows(str(tmp_path / "ref.db")) and len(rows(db)) == 40 * 13
    assert stage_keys(db) == stage_keys(str(tmp_path / "ref.db"))  # none lost, none doubled
    assert report.worst_case == reference.reports["standard"].worst_case


@pytest.mark.slow
def test_workers_get_checkpoints_and_submissions_from_the_driver(tmp_path: Path, ray_needed,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose host has its own empty workspace (``$GAUNTLET_WORKER_HOME``, as on another machine)
    receives the submitted entry and the driver's checkpoint through Ray's object store, verified by
    sha256, and reuses the checkpoint instead of training it again."""
    driver = submitted(tmp_path / "driver")
    trained = api.train("my-cnn4", budget="tiny", home=driver)
    worker_home = tmp_path / "worker-host"
    monkeypatch.setenv(WORKER_HOME, str(worker_home))
    done: dict[str, str] = {}
    api.evaluate("my-cnn4", TINY["protocol"], store=str(tmp_path / "shared.db"), home=driver, budget="tiny",
                 executor="ray", checks=False, on_task=lambda task, message, s: done.update({task.label(): message}))
    assert done["train my-cnn4"].startswith("reused"), done
    copy = worker_home / "checkpoints" / trained.path.name
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == trained.sha256
    assert (worker_home / "submissions").is_dir() and any((worker_home / "submissions").iterdir())


def test_install_verifies_every_sha256(tmp_path: Path) -> None:
    source = tmp_path / "driver" / "checkpoints" / "m.safetensors"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"weights")
    art = Artifact.of(tmp_path / "driver", source)
    worker = tmp_path / "worker"
    install(worker, [art])
    assert (worker / "checkpoints" / "m.safetensors").read_bytes() == b"weights"
    install(worker, [art])  # already there with the same sha256: nothing to do
    (worker / "checkpoints" / "m.safetensors").write_bytes(b"stale")
    with pytest.raises(BenchError, match="differs from"):
        install(worker, [art])
    with pytest.raises(BenchError, match="arrived damaged"):
        install(tmp_path / "other", [Artifact(art.relpath, art.sha256, b"weightz")])
    assert not (tmp_path / "other" / "checkpoints" / "m.safetensors").exists()


def test_executor_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["demo", "--entries", "standard", "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1",
            "--home", str(tmp_path)]
    unknown = CliRunner().invoke(app, [*args, "--executor", "dask"])
    assert unknown.exit_code == 1 and unknown.output.startswith("error: unknown executor 'dask'")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    missing = CliRunner().invoke(app, [*args, "--executor", "ray"])
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: --executor ray needs Ray: pip install -e '.[ray]'"
    assert len(missing.output.strip().splitlines()) == 1

"""Storage, on SQLite and PostgreSQL: upgrades in place without losing rows, concurrent writers."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from bench.engine.evaluate import EvalTarget, evaluate
from bench.errors import BenchError
from bench.store.database import SCHEMA_VERSION, Store
from registry import get_entry
from tests.conftest import Linear, small_protocol

NEW_COLUMNS = {"results": ("score", "rejected", "l2", "l0"), "runs": ("detector_json",)}


def test_schema_1_database_is_upgraded_and_keeps_its_rows(new_db, linear_mnist: Linear) -> None:
    """On SQLite and on PostgreSQL: the columns schema 2 added are dropped, and opening the database
    adds them back without touching a row; evaluation then resumes on it."""
    db = new_db("old")
    store = Store(db)
    protocol = small_protocol(n=20, chunk=20, eps=(0.0, 0.1), steps=2)
    run_id = evaluate(store, EvalTarget(get_entry("standard"), linear_mnist, "w", "test", 0), protocol)
    before = [(r.attack, r.eps, r.sample, r.robust_after, r.pred) for r in store.results(run_id)]
    with store.engine.begin() as con:  # turn it into a schema-1 database: drop the columns schema 2 added
        for table, cols in NEW_COLUMNS.items():
            for col in cols:
                con.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
        con.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    store.engine.dispose()
    upgraded = Store(db)
    after = [(r.attack, r.eps, r.sample, r.robust_after, r.pred) for r in upgraded.results(run_id)]
    assert after == before and len(after) > 0
    assert all(r.score is None for r in upgraded.results(run_id))
    insp = inspect(upgraded.engine)
    for table, cols in NEW_COLUMNS.items():
        assert set(cols) <= {c["name"] for c in insp.get_columns(table)}
    with upgraded.engine.connect() as con:
        version = con.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar_one()
    assert version == str(SCHEMA_VERSION)
    # and evaluation resumes on the upgraded database (all stages done: nothing new is written)
    assert evaluate(upgraded, EvalTarget(get_entry("standard"), linear_mnist, "w", "test", 0), protocol) == run_id


def test_newer_schema_is_refused_with_one_line(new_db) -> None:
    db = new_db("new")
    store = Store(db)
    with store.engine.begin() as con:
        con.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
    store.engine.dispose()
    with pytest.raises(BenchError, match="newer than this code") as info:
        Store(db)
    assert "\n" not in str(info.value)


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="cannot open database") as info:
        Store(f"postgresql+psycopg://nobody@/gauntlet?host={tmp_path}/no-server&connect_timeout=2")
    assert "\n" not in str(info.value)


def _evaluate_slice(db: str, start: int, stop: int) -> int:
    """A writer process: opens the (maybe still empty) database and evaluates one slice."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same (untrained) weights in every process: a cheap model with varied rows
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    target = EvalTarget(get_entry("standard"), model, "w", "test", 0)
    return evaluate(Store(db), target, small_protocol(n=60, chunk=20, eps=(0.0, 0.1), steps=2), start=start, stop=stop)


@pytest.fixture(scope="module")
def writers():
    """Three spawned writer processes, shared by the backends' runs (starting them is most of the cost)."""
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        yield pool


def test_concurrent_writers_create_one_schema_and_one_run(new_db, writers: ProcessPoolExecutor) -> None:
    """Three processes open a new database at once (each creates the schema) and store a slice each of
    the same run: one run, the rows of a one-process evaluation, none lost or doubled."""
    ref_db, db = new_db("ref"), new_db("shared")
    ref_id = _evaluate_slice(ref_db, 0, 60)
    ids = list(writers.map(_evaluate_slice, [db] * 3, [0, 20, 40], [20, 40, 60]))
    store, ref = Store(db), Store(ref_db)
    assert len(set(ids)) == 1 and len(store.runs()) == 1

    def rows(st: Store, run_id: int) -> list[tuple]:
        return [(r.attack, r.eps, r.sample, r.attacked, r.success, r.robust_after, r.pred) for r in st.results(run_id)]

    assert rows(store, ids[0]) == rows(ref, ref_id) and len(rows(ref, ref_id)) == 60 * 7

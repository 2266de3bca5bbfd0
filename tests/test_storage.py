"""Storage: a database written by an older schema is upgraded in place without losing rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench.engine.evaluate import EvalTarget, evaluate
from bench.errors import BenchError
from bench.store.database import SCHEMA_VERSION, Store
from registry import get_entry
from tests.conftest import Linear, small_protocol

NEW_COLUMNS = {"results": ("score", "rejected", "l2", "l0"), "runs": ("detector_json",)}


def test_schema_1_database_is_upgraded_and_keeps_its_rows(tmp_path: Path, linear_mnist: Linear) -> None:
    db = tmp_path / "old.db"
    store = Store(db)
    protocol = small_protocol(n=20, chunk=20, eps=(0.0, 0.1), steps=2)
    run_id = evaluate(store, EvalTarget(get_entry("standard"), linear_mnist, "w", "test", 0), protocol)
    before = [(r.attack, r.eps, r.sample, r.robust_after, r.pred) for r in store.results(run_id)]
    store.engine.dispose()
    con = sqlite3.connect(db)  # turn it into a schema-1 database: drop the columns schema 2 added
    for table, cols in NEW_COLUMNS.items():
        for col in cols:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    upgraded = Store(db)
    after = [(r.attack, r.eps, r.sample, r.robust_after, r.pred) for r in upgraded.results(run_id)]
    assert after == before and len(after) > 0
    assert all(r.score is None for r in upgraded.results(run_id))
    con = sqlite3.connect(db)
    for table, cols in NEW_COLUMNS.items():
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        assert set(cols) <= have
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.close()
    # and evaluation resumes on the upgraded database (all stages done: nothing new is written)
    assert evaluate(upgraded, EvalTarget(get_entry("standard"), linear_mnist, "w", "test", 0), protocol) == run_id


def test_newer_schema_is_refused_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    Store(db).engine.dispose()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(BenchError, match="newer than this code"):
        Store(db)

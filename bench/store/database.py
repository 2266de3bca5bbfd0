"""SQLite or PostgreSQL (any SQLAlchemy URL) storage of runs, per-sample rows and per-stage records.

PostgreSQL (``postgresql+psycopg://user@host/db``, the ``postgres`` extra) is the store a cluster's
workers share; both give the same rows (tests/test_postgres.py, and the storage, resume and engine tests
run on both).

* ``runs``: one per (entry, protocol fingerprint, checkpoint sha256): provenance (code version,
  packages, device, seeds, wall time). Slices evaluated elsewhere with the same key merge into it.
* ``results``: one row per (run, attack, epsilon, sample) under a unique constraint. ``attacked``
  says whether the attack ran on the sample (it is skipped once broken at this or a smaller eps),
  ``success`` whether this attack broke it (engine-verified), ``robust_after`` whether the sample
  is still robust after this stage (clean correct and unbroken by every stage so far).
* ``stages``: one per (run, attack, epsilon, chunk): written in the same transaction as the chunk's
  rows, so a stage is either fully stored or absent; it records time and forward/backward passes.

Schema 2 adds, for detector entries, the detector's ``score`` and the ``rejected`` verdict per row
and the run's calibration record (``detector_json``), and per-row ``l2`` / ``l0`` distances for
minimum-norm attacks. A schema-1 database is upgraded in place by adding the nullable columns, so
stored results are never lost.

Schema 3 adds ``checks``: one row per (run, sanity check) with its severity, status, measured
value, threshold and evidence (JSON: counts, sample ids, figures), written by :mod:`bench.checks.suite`.
Re-running the checks of a run replaces its check rows in one transaction; result rows are never
touched.

Schema 4 adds the run's escalation record (``escalation_json``, :mod:`bench.escalation`): which failed
checks triggered which remedies, the ordered escalation stages (ordinary rows of ``results`` and
``stages``, under their own labels and seeds), and the checks run again after them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.errors import BenchError

SCHEMA_VERSION = 4
SCHEMA_LOCK_KEY = 0x6761756E746C6574  # 'gauntlet': the advisory lock of schema changes (PostgreSQL)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("entry_id", "fingerprint", "checkpoint_sha256", name="uq_run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entry_id: Mapped[str] = mapped_column(String(64), index=True)
    entry_name: Mapped[str] = mapped_column(String(200))
    entry_version: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    protocol_json: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    budget: Mapped[str] = mapped_column(String(32))
    train_seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    code_version: Mapped[str] = mapped_column(String(64))
    packages: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[str] = mapped_column(String(40))
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    detector_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # calibration of a detector entry
    escalation_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # see bench.escalation


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("run_id", "attack", "eps", "sample", name="uq_result"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    attack: Mapped[str] = mapped_column(String(64))
    eps: Mapped[float] = mapped_column(Float)
    sample: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    attacked: Mapped[bool] = mapped_column(Boolean)
    success: Mapped[bool] = mapped_column(Boolean)
    robust_after: Mapped[bool] = mapped_column(Boolean)
    pred: Mapped[int | None] = mapped_column(Integer, nullable=True)
    linf: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # detector score (higher: more suspicious)
    rejected: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # detector verdict at the run's threshold
    l2: Mapped[float | None] = mapped_column(Float, nullable=True)
    l0: Mapped[float | None] = mapped_column(Float, nullable=True)


RESULT_COLUMNS = tuple(c.key for c in Result.__table__.columns if c.key != "id")


def _insert_rows(session: Session, values: list[dict[str, Any]]) -> None:
    """Result rows as column values in one executemany, no primary keys read back (as add_all would).
    ``render_nulls`` keeps None values in the statement: otherwise the ORM groups rows by which keys
    are None and issues a statement per group."""
    if values:
        session.execute(insert(Result), values, execution_options={"render_nulls": True})


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "attack", "eps", "chunk_start", name="uq_stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    attack: Mapped[str] = mapped_column(String(64))
    eps: Mapped[float] = mapped_column(Float)
    chunk_start: Mapped[int] = mapped_column(Integer)
    chunk_stop: Mapped[int] = mapped_column(Integer)
    n_attacked: Mapped[int] = mapped_column(Integer)
    n_broken: Mapped[int] = mapped_column(Integer)
    n_forward: Mapped[int] = mapped_column(Integer)
    n_backward: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)


class Check(Base):
    __tablename__ = "checks"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_check"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))  # unreliable | warning | info
    status: Mapped[str] = mapped_column(String(16))  # pass | fail | not-run
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[str] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)
    evidence_json: Mapped[str] = mapped_column(Text)
    suite: Mapped[str] = mapped_column(String(64))  # the check suite's name and fingerprint
    code_version: Mapped[str] = mapped_column(String(64))
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[str] = mapped_column(String(40))


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def normalize_url(db: str | os.PathLike[str]) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite)."""
    text = str(db)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    return f"sqlite:///{path}"


def store_name(url: str) -> str:
    """How a page names a database: a SQLite file's name, else the server database's name (never a host,
    user or password)."""
    from sqlalchemy.engine import make_url

    if url.startswith("sqlite"):
        return url.rsplit("/", 1)[-1] or "in-memory database"
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a name for a page, never an error
        return "database"
    return f"{parsed.get_backend_name()} database {parsed.database or ''}".strip()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """Thin typed access to the database; every write is one transaction."""

    def __init__(self, db: str | os.PathLike[str], create: bool = True) -> None:
        self.url = normalize_url(db)
        if self.url.startswith("sqlite:///"):
            path = Path(self.url.removeprefix("sqlite:///"))
            if not create and not path.is_file():
                raise BenchError(f"database not found: {path}")
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(self.url)
        except ModuleNotFoundError as exc:
            hint = " (pip install -e '.[postgres]')" if self.url.startswith("postgresql") else ""
            raise BenchError(f"database {self.url.split('://')[0]}: driver {exc.name} not installed{hint}") from None
        except Exception as exc:
            raise BenchError(f"bad database URL {self.url!r}: {exc}".splitlines()[0]) from None
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            if create:
                self._create_or_upgrade()
            with Session(self.engine) as s:
                s.execute(select(func.count(Run.id))).scalar_one()
        except SQLAlchemyError as exc:
            raise BenchError(f"cannot open database {self.url}: {exc.__class__.__name__}: "
                             f"{str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0]}") from None

    def _create_or_upgrade(self) -> None:
        """Create the schema, or upgrade an older one, and record its version: in one transaction.

        On PostgreSQL the transaction first takes an advisory lock, so processes opening a new database at
        the same moment (a cluster's workers) create it once instead of colliding on the catalog; the
        others then find it made. On SQLite it begins with the file's write lock (``BEGIN IMMEDIATE``),
        for the same reason.
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            elif conn.dialect.name == "sqlite":  # the write lock before the first look at the schema
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            Base.metadata.create_all(conn)
            _upgrade(conn)
            with Session(bind=conn) as s:
                meta = s.get(Meta, "schema_version")
                if meta is None:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(meta.value) > SCHEMA_VERSION:
                    raise BenchError(f"database {self.url} has schema {meta.value}, newer than this code's "
                                     f"{SCHEMA_VERSION}; upgrade Gauntlet")
                else:
                    meta.value = str(SCHEMA_VERSION)
                s.flush()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def find_run(self, entry_id: str, fingerprint: str, checkpoint_sha256: str) -> Run | None:
        """The run of these weights of this entry under this protocol (the key every slice shares)."""
        with self.session() as s:
            return s.execute(select(Run).filter_by(entry_id=entry_id, fingerprint=fingerprint,
                                                   checkpoint_sha256=checkpoint_sha256)).scalar_one_or_none()

    def run(self, run_id: int) -> Run:
        """The run with this id (a one-line error when there is none)."""
        with self.session() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise BenchError(f"run {run_id} not found")
        return run

    def get_or_create_run(self, **fields: Any) -> Run:
        key = {k: fields[k] for k in ("entry_id", "fingerprint", "checkpoint_sha256")}
        with self.session() as s:
            run = s.execute(select(Run).filter_by(**key)).scalar_one_or_none()
            if run is not None:
                return run
            run = Run(created_at=now(), updated_at=now(), wall_seconds=0.0, **fields)
            s.add(run)
            try:
                s.commit()
            except IntegrityError:  # another process created it first
                s.rollback()
                return s.execute(select(Run).filter_by(**key)).scalar_one()
            return run

    def done_stages(self, run_id: int) -> set[tuple[str, float, int]]:
        with self.session() as s:
            rows = s.execute(select(Stage.attack, Stage.eps, Stage.chunk_start).where(Stage.run_id == run_id))
            return {(a, e, c) for a, e, c in rows}

    def rows_for(self, run_id: int, attack: str, eps: float, samples: Sequence[int]) -> list[Result]:
        with self.session() as s:
            q = select(Result).where(Result.run_id == run_id, Result.attack == attack, Result.eps == eps,
                                     Result.sample.in_(list(samples))).order_by(Result.sample)
            return list(s.execute(q).scalars())

    def write_stage(self, stage: Stage, rows: Iterable[Result], wall_seconds: float) -> bool:
        """Insert a stage and its rows atomically. Returns False if it was already stored."""
        with self.session() as s:
            try:
                with s.begin():
                    s.add(stage)
                    _insert_rows(s, [{c: getattr(r, c) for c in RESULT_COLUMNS} for r in rows])
                    run = s.get(Run, stage.run_id)
                    if run is not None:
                        run.wall_seconds = (run.wall_seconds or 0.0) + wall_seconds
                        run.updated_at = now()
            except IntegrityError:
                return False
        return True

    def add_run(self, run: Run, rows: list[dict[str, Any]], children: Iterable[Stage | Check]) -> int:
        """Insert a whole run in one transaction: the run, its result rows (column values in one
        executemany, as :meth:`write_stage`) and its stages and checks; returns the run's id."""
        with self.session() as s, s.begin():
            s.add(run)
            s.flush()
            items = list(children)
            for obj in items:
                obj.run_id = run.id
            s.add_all(items)
            _insert_rows(s, [{**row, "run_id": run.id} for row in rows])
            return run.id

    def set_detector_calibration(self, run_id: int, detector_json: str) -> str:
        """Store a run's detector calibration unless one is stored; returns the stored one.

        The first writer wins, so concurrent slices and resumed runs share one threshold.
        """
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            if run is None:
                raise BenchError(f"run {run_id} not found")
            if run.detector_json is None:
                run.detector_json = detector_json
            return run.detector_json

    def set_escalation(self, run_id: int, escalation_json: str) -> None:
        """Store (or replace) a run's escalation record; its rows are stored as ordinary stages."""
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            if run is None:
                raise BenchError(f"run {run_id} not found")
            run.escalation_json = escalation_json

    def runs(self) -> list[Run]:
        with self.session() as s:
            return list(s.execute(select(Run).order_by(Run.id)).scalars())

    def results(self, run_id: int) -> list[Result]:
        with self.session() as s:
            q = select(Result).where(Result.run_id == run_id).order_by(Result.attack, Result.eps, Result.sample)
            return list(s.execute(q).scalars())

    def replace_checks(self, run_id: int, checks: Iterable[Check]) -> None:
        """Store a run's check results, replacing any earlier ones, in one transaction."""
        with self.session() as s, s.begin():
            for old in s.execute(select(Check).where(Check.run_id == run_id)).scalars():
                s.delete(old)
            s.flush()
            s.add_all(list(checks))

    def checks(self, run_id: int) -> list[Check]:
        with self.session() as s:
            return list(s.execute(select(Check).where(Check.run_id == run_id).order_by(Check.id)).scalars())

    def stages(self, run_id: int) -> list[Stage]:
        with self.session() as s:
            return list(s.execute(select(Stage).where(Stage.run_id == run_id)).scalars())


def _upgrade(conn: Any) -> None:
    """Add the columns of newer schemas that an older database lacks (nullable, so no row changes);
    ``conn`` is the schema transaction's connection."""
    insp = inspect(conn)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have:
                if not col.nullable:
                    raise BenchError(f"cannot upgrade table {table.name}: new column {col.name} is required")
                ddl = col.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}'))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def packages_json() -> str:
    """Versions of the packages that decide results, for run provenance."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "pyautoattack", "numpy", "sqlalchemy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return json.dumps(out, sort_keys=True)

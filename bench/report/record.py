"""Results of record: one run as a small, diffable JSON file that rebuilds every number of the run.

A record (``results/<protocol>/<entry>.<budget>.seed<seed>.json``; no seed for a pretrained model) holds

* ``model_info``: the run's RobustBench-style export (:func:`bench.report.export.model_info`), the
  figures a reader looks at first;
* ``provenance``: protocol fingerprint, check-suite and escalation-policy ids, code version, torch
  version, thread count and CPU capability, the checkpoint file's sha256 and the weights' sha256
  (names and tensor bytes only: a retrained checkpoint differs from the record's in its file
  metadata, never in its weights): what the numbers depend on;
* ``survivors``: for each stage and eps (``"pgd-ce@0.3"``), which samples were still robust after it,
  as a hex bit mask over the run's samples (bit i of the integer is sample i): the compact per-sample
  record the regression suite compares;
* ``tables``: the run's rows exactly as the store holds them (runs, results, stages, checks), column
  by column and compressed (bit masks for flags, one digit per prediction, float32 values in their
  shortest exact form), so that :func:`import_record` restores the very rows, and the leaderboard
  built from records (``bench leaderboard --from results/``) is the one built from the database.

Everything is plain JSON with sorted keys: a refreshed record diffs line by line against the old one.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.exc import IntegrityError

from bench.errors import BenchError
from bench.store.database import Check, Result, Run, Stage, Store

FORMAT = "gauntlet-record/1"
RUN_COLUMNS = ("entry_id", "entry_name", "entry_version", "protocol", "fingerprint", "protocol_json",
               "checkpoint_sha256", "budget", "train_seed", "code_version", "packages", "device", "n_samples",
               "created_at", "updated_at", "wall_seconds", "detector_json", "escalation_json")
STAGE_COLUMNS = ("attack", "eps", "chunk_start", "chunk_stop", "n_attacked", "n_broken", "n_forward", "n_backward",
                 "seconds", "seed")
CHECK_COLUMNS = ("name", "severity", "status", "value", "threshold", "summary", "evidence_json", "suite",
                 "code_version", "seconds", "created_at")
FLAG_COLUMNS = ("attacked", "success", "robust_after")
FLOAT_COLUMNS = ("linf", "l2", "l0", "score")


def record_path(root: Path, run: Run) -> Path:
    """Where the record of ``run`` lives under ``root`` (one file per entry, protocol, budget and seed)."""
    return record_file(root, run.protocol, run.entry_id, run.budget, run.train_seed)


def record_file(root: Path, protocol: str, entry_id: str, budget: str, seed: int | None) -> Path:
    """``<root>/<protocol>/<entry>.<budget>.seed<seed>.json`` (no seed: a pretrained model has none)."""
    return Path(root) / protocol / f"{entry_id}.{budget}{'' if seed is None else f'.seed{seed}'}.json"


def cell_key(attack: str, eps: float) -> str:
    return f"{attack}@{float(eps)!r}"


def parse_key(key: str) -> tuple[str, float]:
    attack, _, eps = key.rpartition("@")
    return attack, float(eps)


# -- encodings ---------------------------------------------------------------------------------------------

def _mask(flags: Iterable[bool]) -> str:
    value = 0
    for i, f in enumerate(flags):
        if f:
            value |= 1 << i
    return format(value, "x")


def _unmask(text: str, n: int) -> list[bool]:
    value = int(text, 16)
    return [bool(value >> i & 1) for i in range(n)]


def _f32(value: float) -> float | None:
    """The shortest decimal that reads back as the same float32, if ``value`` is one; else None."""
    packed = struct.pack("<f", value) if abs(value) < 3.4e38 else None
    if packed is None or struct.unpack("<f", packed)[0] != value:
        return None
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack("<f", short) == packed:
            return short
    return value


def _to_f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _floats(values: list[float | None]) -> dict[str, Any] | None:
    """A nullable float column: float32 values in their shortest exact form ("f32"), others as they are."""
    if all(v is None for v in values):
        return None
    short = [None if v is None else _f32(float(v)) for v in values]
    if all(s is not None or v is None for s, v in zip(short, values, strict=True)):
        return {"f32": short}
    return {"f64": [_json_float(v) for v in values]}


def _json_float(value: float | None) -> float | str | None:
    """``value``, or for an infinite or NaN one its name ("inf", "-inf", "nan"): strict JSON has no such
    numbers, and ``float()`` reads the names back (a detector's score can be infinite)."""
    return value if value is None or math.isfinite(value) else str(float(value))


def _unfloats(column: dict[str, Any] | None, n: int) -> list[float | None]:
    if column is None:
        return [None] * n
    if "f32" in column:
        return [None if v is None else _to_f32(float(v)) for v in column["f32"]]
    return [None if v is None else float(v) for v in column["f64"]]


def _ints(values: list[int | None]) -> str | list[int | None]:
    """Predictions: one character each ("-" for none) when every class is a digit, else a list."""
    if all(v is None or 0 <= v <= 9 for v in values):
        return "".join("-" if v is None else str(v) for v in values)
    return values


def _unints(column: str | list[int | None]) -> list[int | None]:
    if isinstance(column, str):
        return [None if c == "-" else int(c) for c in column]
    return [None if v is None else int(v) for v in column]


def _nullable_flags(values: list[bool | None]) -> dict[str, str] | None:
    if all(v is None for v in values):
        return None
    return {"set": _mask(v is not None for v in values), "true": _mask(bool(v) for v in values)}


def _unnullable_flags(column: dict[str, str] | None, n: int) -> list[bool | None]:
    if column is None:
        return [None] * n
    present, true = _unmask(column["set"], n), _unmask(column["true"], n)
    return [t if p else None for p, t in zip(present, true, strict=True)]


def _strings(values: list[str | None]) -> dict[str, str] | None:
    """A nullable string column with few distinct values: one bit mask per value."""
    if all(v is None for v in values):
        return None
    return {v: _mask(x == v for x in values) for v in sorted({x for x in values if x is not None})}


def _unstrings(column: dict[str, str] | None, n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    for value, mask in (column or {}).items():
        for i, hit in enumerate(_unmask(mask, n)):
            if hit:
                out[i] = value
    return out


def _ranges(samples: list[int]) -> list[list[int]]:
    """Sorted sample ids as [start, stop) ranges."""
    out: list[list[int]] = []
    for s in samples:
        if out and out[-1][1] == s:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return out


def _unranges(ranges: list[list[int]]) -> list[int]:
    return [s for a, b in ranges for s in range(a, b)]


# -- building and reading -----------------------------------------------------------------------------------

def _encode_cell(rows: list[Result]) -> dict[str, Any]:
    cell: dict[str, Any] = {"samples": _ranges([r.sample for r in rows]), "pred": _ints([r.pred for r in rows])}
    for col in FLAG_COLUMNS:
        cell[col] = _mask(bool(getattr(r, col)) for r in rows)
    for col in FLOAT_COLUMNS:
        cell[col] = _floats([getattr(r, col) for r in rows])
    cell["detail"] = _strings([r.detail for r in rows])
    cell["rejected"] = _nullable_flags([r.rejected for r in rows])
    return cell


def build_record(store: Store, run_id: int, model_info: dict[str, Any], threads: int | None,
                 weights_sha256: str | None = None) -> dict[str, Any]:
    """The record of a stored run (``model_info``: its export; ``threads``: torch's thread count it ran
    with; ``weights_sha256``: the evaluated model's weights, names and tensor bytes only, so that a
    retrained checkpoint whose file differs only in its metadata, such as training seconds, matches)."""
    run = store.run(run_id)
    rows = store.results(run_id)
    labels: dict[int, int] = {}
    cells: dict[str, list[Result]] = {}
    fingerprints = {r.fingerprint for r in rows}
    for r in rows:
        if labels.setdefault(r.sample, r.label) != r.label:
            raise BenchError(f"run {run_id}: sample {r.sample} has two labels in its rows")
        cells.setdefault(cell_key(r.attack, r.eps), []).append(r)
    if fingerprints - {run.fingerprint}:
        raise BenchError(f"run {run_id} has rows of another protocol fingerprint: {sorted(fingerprints)}")
    for rs in cells.values():
        rs.sort(key=lambda r: r.sample)
    checks = store.checks(run_id)
    packages = json.loads(run.packages or "{}")
    escalation = json.loads(run.escalation_json) if run.escalation_json else None
    return {
        "format": FORMAT,
        "model_info": model_info,
        "provenance": {
            "entry": run.entry_id, "protocol": run.protocol, "budget": run.budget, "seed": run.train_seed,
            "fingerprint": run.fingerprint, "checkpoint_sha256": run.checkpoint_sha256,
            "weights_sha256": weights_sha256,
            "check_suite": sorted({c.suite for c in checks}), "code_version": run.code_version,
            "escalation_policy": None if escalation is None else escalation.get("policy"),
            "torch": packages.get("torch"), "threads": threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "n_samples": run.n_samples, "device": run.device,
        },
        "survivors": {k: _mask_of(rs) for k, rs in sorted(cells.items())},
        "tables": {
            "run": {c: getattr(run, c) for c in RUN_COLUMNS},
            "labels": [labels[i] for i in sorted(labels)],
            "results": {k: _encode_cell(rs) for k, rs in sorted(cells.items())},
            "stages": {"columns": list(STAGE_COLUMNS),
                       "rows": [[getattr(s, c) for c in STAGE_COLUMNS] for s in store.stages(run_id)]},
            "checks": [{c: _json_float(ch.value) if c == "value" else getattr(ch, c) for c in CHECK_COLUMNS}
                       for ch in checks],
        },
    }


def _mask_of(rows: list[Result]) -> str:
    """Survivors of one cell: bit ``sample`` set where the sample was robust after the stage."""
    value = 0
    for r in rows:
        if r.robust_after:
            value |= 1 << r.sample
    return format(value, "x")


def dumps(record: dict[str, Any]) -> str:
    """JSON with sorted keys, one line per dict key and every list on one line: diffable and small."""

    def fmt(value: Any, depth: int) -> str:
        if isinstance(value, dict) and value:
            pad = " " * (depth + 1)
            items = [f"{pad}{json.dumps(str(k))}: {fmt(v, depth + 1)}" for k, v in sorted(value.items())]
            return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)

    return fmt(record, 0) + "\n"


def write_record(record: dict[str, Any], root: Path, run: Run) -> Path:
    """Write ``record`` to its path under ``root``; atomically, so that an interrupted refresh leaves
    the previous record whole."""
    path = record_path(root, run)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(dumps(record), encoding="utf-8")
        partial.replace(path)
    except (OSError, ValueError) as exc:  # ValueError: a non-finite number strict JSON cannot hold
        raise BenchError(f"cannot write record {path}: {exc}".splitlines()[0]) from None
    return path


def read_record(path: Path) -> dict[str, Any]:
    """A record file, checked for its format (a one-line error for anything else)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"cannot read record {path}: {exc}".splitlines()[0]) from None
    return check_record(record, str(path))


def check_record(record: Any, source: str) -> dict[str, Any]:
    """``record`` if it is a Gauntlet record with every section, else a one-line error naming ``source``."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise BenchError(f"{source} is not a Gauntlet record ({FORMAT})")
    for key in ("model_info", "provenance", "survivors", "tables"):
        if not isinstance(record.get(key), dict):
            raise BenchError(f"record {source} has no {key!r} section")
    return record


# The records of record the repository keeps: every built-in MNIST entry under both quick protocols,
# trained with the quick budget and seed 0 (results/README.md lists the ones still missing, with why).
RECORD_PROTOCOLS = ("mnist-linf-quick-v1", "mnist-linf-quick-v2")


def missing_records(root: Path) -> list[tuple[str, str]]:
    """(protocol, entry id) of every record of record not yet under ``root``, protocol by protocol."""
    from registry import ALL_BUILTIN

    return [(protocol, e.id) for protocol in RECORD_PROTOCOLS for e in ALL_BUILTIN
            if "mnist" in e.architectures and not record_file(root, protocol, e.id, "quick", 0).is_file()]


def record_files(root: Path) -> list[Path]:
    """Every record under ``root`` (a folder of records, or one record file), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise BenchError(f"no records at {root}")
    return sorted(p for p in root.rglob("*.json") if p.is_file())


@dataclass(frozen=True)
class Survivors:
    """Which samples survived each (stage, eps) cell of a run."""

    n_samples: int
    cells: dict[tuple[str, float], frozenset[int]]

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> Survivors:
        try:
            n = int(record["provenance"]["n_samples"])
            return cls(n, {parse_key(k): frozenset(i for i, f in enumerate(_unmask(v, n)) if f)
                           for k, v in record["survivors"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            entry = record.get("provenance", {}).get("entry", "?") if isinstance(record, dict) else "?"
            raise BenchError(f"the record of {entry} is damaged: its survivors cannot be read "
                             f"({type(exc).__name__}: {exc})".splitlines()[0]) from None

    @classmethod
    def of_rows(cls, n_samples: int, rows: Iterable[tuple[str, float, int, bool]]) -> Survivors:
        """From per-sample rows as (attack, eps, sample, robust_after)."""
        cells: dict[tuple[str, float], set[int]] = {}
        for attack, eps, sample, robust_after in rows:
            got = cells.setdefault((attack, float(eps)), set())
            if robust_after:
                got.add(sample)
        return cls(n_samples, {k: frozenset(v) for k, v in cells.items()})

    @classmethod
    def of_run(cls, store: Store, run_id: int) -> Survivors:
        return cls.of_rows(store.run(run_id).n_samples,
                           ((r.attack, r.eps, r.sample, r.robust_after) for r in store.results(run_id)))


def _consistent(record: dict[str, Any], run: Run, results: list[dict[str, Any]]) -> None:
    """Raise ValueError unless a record's parts agree: the site is built from its tables and the regression
    suite compares its survivors, so a record whose two copies differ could show one number and pass with
    another. Its protocol and packages must also parse, as the site reads them."""
    protocol = json.loads(run.protocol_json)
    if not isinstance(protocol, dict) or not {"dataset", "epsilons", "attacks"} <= protocol.keys():
        raise ValueError("its protocol has no dataset, epsilons or attacks")
    if not isinstance(json.loads(run.packages), dict):
        raise ValueError("its packages are not a JSON object")
    if record["provenance"]["fingerprint"] != run.fingerprint:
        raise ValueError("its provenance and its run name two protocol fingerprints")
    rows = ((r["attack"], r["eps"], r["sample"], r["robust_after"]) for r in results)
    if Survivors.of_record(record) != Survivors.of_rows(run.n_samples, rows):
        raise ValueError("its survivors differ from its per-sample rows")


def import_record(store: Store, record: dict[str, Any], source: str = "record") -> int:
    """Restore a record's rows into ``store`` as a new run; returns its id (a one-line error when the
    record is damaged or the store already holds that run)."""
    try:
        tables = record["tables"]
        labels = [int(v) for v in tables["labels"]]
        run = Run(**{c: tables["run"][c] for c in RUN_COLUMNS})
        if store.find_run(run.entry_id, run.fingerprint, run.checkpoint_sha256) is not None:
            raise BenchError(f"{source}: the store already holds the run of {run.entry_id} under {run.protocol}")
        results: list[dict[str, Any]] = []  # column values for one executemany (Store.add_run), no ORM objects
        for key, cell in tables["results"].items():
            attack, eps = parse_key(key)
            samples = _unranges(cell["samples"])
            n = len(samples)
            flags = {c: _unmask(cell[c], n) for c in FLAG_COLUMNS}
            floats = {c: _unfloats(cell.get(c), n) for c in FLOAT_COLUMNS}
            preds, details = _unints(cell["pred"]), _unstrings(cell.get("detail"), n)
            rejected = _unnullable_flags(cell.get("rejected"), n)
            if len(preds) != n:
                raise ValueError(f"cell {key}: {len(preds)} predictions for {n} samples")
            results += [{"fingerprint": run.fingerprint, "attack": attack, "eps": eps, "sample": s,
                         "label": labels[s], "attacked": flags["attacked"][i], "success": flags["success"][i],
                         "robust_after": flags["robust_after"][i], "pred": preds[i], "linf": floats["linf"][i],
                         "l2": floats["l2"][i], "l0": floats["l0"][i], "score": floats["score"][i],
                         "detail": details[i], "rejected": rejected[i]} for i, s in enumerate(samples)]
        columns = tables["stages"]["columns"]
        stages = [Stage(fingerprint=run.fingerprint, **dict(zip(columns, row, strict=True)))
                  for row in tables["stages"]["rows"]]
        checks = [Check(**{c: ch[c] for c in CHECK_COLUMNS}) for ch in tables["checks"]]
        for check in checks:
            check.value = None if check.value is None else float(check.value)
        _consistent(record, run, results)
    except BenchError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BenchError(f"{source} is damaged: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    try:
        return store.add_run(run, results, [*stages, *checks])
    except IntegrityError as exc:  # rows the store's constraints refuse (a cell twice, say): nothing is stored
        raise BenchError(f"{source} is damaged: {str(exc.orig).splitlines()[0]}") from None

"""bench.report.export: RobustBench-style JSON and per-sample CSV against rows written by hand (no training).

Every expected figure is computed here from the rows the test itself stores, never by bench.store.summary.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

from bench.checks.suite import CheckResult
from bench.errors import BenchError
from bench.protocol.protocols import AttackSpec, Protocol, get_protocol
from bench.report.export import CSV_COLUMNS, export, export_csv, export_json
from bench.store.database import Result, Stage, Store
from registry.entry import Claim, Entry, Paper

# Two epsilons, AutoAttack at the primary one only: stages (fgsm, .1) (pgd-cw, .1) (fgsm, .3) (pgd-cw, .3)
# (autoattack, .3).
PROTO = Protocol("test-export-v1", "mnist", "test", 6, "Linf", (0.1, 0.3), 0.3, (
    AttackSpec("fgsm", "fgsm", {}, seed=0),
    AttackSpec("pgd-cw", "pgd", {"loss": "cw", "steps": 5, "rel_step_size": 0.25}, seed=2),
    AttackSpec("autoattack", "autoattack", {"version": "standard"}, seed=3, at="primary"),
), chunk_size=6)

# sample -> (label, index of the stage that breaks it); -1: wrong on clean inputs, None: never broken.
OUTCOMES: dict[int, tuple[int, int | None]] = {0: (7, -1), 1: (2, 0), 2: (1, 3), 3: (0, 4), 4: (4, None), 5: (9, None)}

REQUIRED = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
            "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "external", "unreliable"}

TOY = Entry(
    id="toy-at", name="Toy adversarial training", description="test entry",
    paper=Paper("A Toy Paper", "A. Author, B. Author", "ICML 2099", "https://example.org/toy"),
    kind="adversarial-training", architectures={"mnist": "madry-cnn"},
    pretrained={"mnist": lambda: nn.Linear(1, 1)},
    claims=(Claim("mnist", "Linf", 0.3, "PGD", 99.0, 92.5, "Table 1"),
            Claim("mnist", "Linf", 0.3, "CW", 99.0, 90.25, "Table 1"),
            Claim("mnist", "Linf", 0.1, "PGD", 99.0, 10.0, "Table 1")),  # another eps: not the headline
    forward_passes=3, extra={"additional_data": False},
)


@dataclass
class Written:
    run_id: int
    rows: list[Result]

    def acc(self, attack: str, eps: float) -> float:
        """Accuracy (%) after one stage, from the rows as written."""
        rs = [r for r in self.rows if r.attack == attack and r.eps == eps]
        return 100.0 * sum(r.robust_after for r in rs) / len(rs)


def write_run(store: Store, proto: Protocol, entry_id: str, outcomes: dict[int, tuple[int, int | None]],
              sha: str = "ab" * 32) -> Written:
    """Store a run of ``proto`` whose cascade breaks each sample at the given stage (engine-like rows)."""
    run = store.get_or_create_run(
        entry_id=entry_id, entry_name=f"{entry_id} (stored name)", entry_version="1", protocol=proto.name,
        fingerprint=proto.fingerprint, protocol_json=proto.run_json(proto.for_entry(())), checkpoint_sha256=sha,
        budget="tiny", train_seed=7, code_version="0.1.0+gtest", packages="{}", device="cpu",
        n_samples=proto.n_samples)
    fp = proto.fingerprint
    samples = sorted(outcomes)
    if not samples:
        return Written(run.id, [])
    alive = {s: outcomes[s][1] != -1 for s in samples}
    clean = [Result(run_id=run.id, fingerprint=fp, attack="clean", eps=0.0, sample=s, label=outcomes[s][0],
                    attacked=True, success=not alive[s], robust_after=alive[s],
                    pred=outcomes[s][0] if alive[s] else (outcomes[s][0] + 1) % 10, linf=0.0) for s in samples]
    written = list(clean)

    def stage(attack: str, eps: float, rows: list[Result]) -> Stage:
        return Stage(run_id=run.id, fingerprint=fp, attack=attack, eps=eps, chunk_start=samples[0],
                     chunk_stop=samples[-1] + 1, n_attacked=sum(r.attacked for r in rows),
                     n_broken=sum(r.success for r in rows), n_forward=0, n_backward=0, seconds=0.0, seed=0)

    assert store.write_stage(stage("clean", 0.0, clean), clean, 0.0)
    for k, (attack, eps) in enumerate(proto.stages()):
        rows = []
        for s in samples:
            label, broken_at = outcomes[s]
            before = alive[s]
            broken = before and broken_at == k
            alive[s] = before and not broken
            rows.append(Result(
                run_id=run.id, fingerprint=fp, attack=attack, eps=eps, sample=s, label=label, attacked=before,
                success=broken, robust_after=alive[s], pred=label if alive[s] else (label + 3) % 10,
                linf=eps if broken else None, detail="apgd-ce" if broken and attack == "autoattack" else None,
                l2=0.1234567891234 * (s + 1) if broken else None))
        assert store.write_stage(stage(attack, eps, rows), rows, 0.0)
        written += rows
    return Written(run.id, written)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "g.db")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def test_json_figures_equal_the_stored_rows(store: Store, tmp_path: Path) -> None:
    w = write_run(store, PROTO, "toy-at", OUTCOMES)
    paths = export_json(store, {"toy-at": TOY}, tmp_path / "out")
    assert [p.name for p in paths] == [f"toy-at--test-export-v1--run{w.run_id}.json"]
    text = paths[0].read_text()
    info = json.loads(text)
    assert REQUIRED <= set(info) and {"worst_case_acc", "ranked_acc", "flags", "gauntlet"} <= set(info)

    clean = [r for r in w.rows if r.attack == "clean"]
    clean_acc = 100.0 * sum(r.robust_after for r in clean) / len(clean)
    assert clean_acc == pytest.approx(500 / 6)  # the hand-made outcomes: sample 0 is wrong
    assert info["clean_acc"] == pytest.approx(clean_acc, abs=1e-12)
    assert info["autoattack_acc"] == pytest.approx(w.acc("autoattack", 0.3), abs=1e-12)
    assert info["autoattack_acc"] == pytest.approx(200 / 6)  # samples 4 and 5 survive everything
    # the worst case is the last stage at the eps (AutoAttack at 0.3, pgd-cw at 0.1: samples 2-5 survive there)
    assert info["worst_case_acc"] == pytest.approx(w.acc("autoattack", 0.3), abs=1e-12)
    assert info["ranked_acc"] == info["worst_case_acc"] == info["external"]
    g = info["gauntlet"]
    assert g["worst_case_by_eps"] == pytest.approx({"0.1": w.acc("pgd-cw", 0.1), "0.3": w.acc("autoattack", 0.3)})
    assert g["worst_case_by_eps"]["0.1"] == pytest.approx(400 / 6)

    assert info["eps"] == 0.3 and isinstance(info["eps"], float)
    assert info["reported"] == 90.25  # the paper's lowest robust figure at the primary eps, not the 0.1 one
    assert info["number_forward_passes"] == 3 and isinstance(info["number_forward_passes"], int)
    assert (info["name"], info["authors"], info["venue"], info["link"], info["architecture"], info["dataset"]) == (
        "Toy adversarial training", "A. Author, B. Author", "ICML 2099", "https://example.org/toy", "madry-cnn",
        "mnist")
    assert info["additional_data"] is False and info["unreliable"] is False and info["flags"] == []
    for key in ("eps", "clean_acc", "reported", "autoattack_acc", "external", "worst_case_acc", "ranked_acc"):
        assert is_number(info[key]), key
    assert not any(isinstance(v, str) and v.replace(".", "", 1).isdigit() for v in info.values())
    assert '"clean_acc": "' not in text and '"eps": "' not in text  # numbers, never strings (unlike RobustBench)

    assert (g["run_id"], g["entry_id"], g["protocol"], g["fingerprint"], g["checkpoint_sha256"]) == (
        w.run_id, "toy-at", "test-export-v1", PROTO.fingerprint, "ab" * 32)
    assert (g["budget"], g["train_seed"], g["n_samples"], g["code_version"], g["complete"]) == (
        "tiny", 7, 6, "0.1.0+gtest", True)
    assert all(is_number(v) for v in g["worst_case_by_eps"].values())
    # deterministic: a second export writes the same bytes, keys sorted
    again = export_json(store, {"toy-at": TOY}, tmp_path / "out2")
    assert again[0].read_text() == text
    assert list(info) == sorted(info)


def test_unreliable_only_for_a_failed_check_of_severity_unreliable(store: Store, tmp_path: Path) -> None:
    w = write_run(store, PROTO, "toy-at", OUTCOMES)
    store.replace_checks(w.run_id, [
        CheckResult("loss-still-moving", "fail", 0.2, "loss still rising").to_row(w.run_id),  # a warning
        CheckResult("not-converged", "pass", 0.0, "converged").to_row(w.run_id),
    ])
    info = load(export_json(store, {"toy-at": TOY}, tmp_path / "a")[0])
    assert info["unreliable"] is False and info["flags"] == ["loss-still-moving"]
    assert info["ranked_acc"] == info["worst_case_acc"]

    # the 4x-steps probe broke sample 4, which survived the whole cascade at the primary eps
    store.replace_checks(w.run_id, [
        CheckResult("loss-still-moving", "fail", 0.2, "loss still rising").to_row(w.run_id),
        CheckResult("not-converged", "fail", 16.7, "more steps break more",
                    {"exposed_at_primary": [4]}).to_row(w.run_id),
    ])
    info = load(export_json(store, {"toy-at": TOY}, tmp_path / "b")[0])
    assert info["unreliable"] is True
    assert info["flags"] == ["not-converged", "loss-still-moving"]  # unreliable ones first
    survivors = sum(r.robust_after for r in w.rows if r.attack == "autoattack")
    assert info["worst_case_acc"] == pytest.approx(100.0 * survivors / 6)
    assert info["ranked_acc"] == pytest.approx(100.0 * (survivors - 1) / 6)
    assert info["external"] == info["ranked_acc"]
    assert "possibly unreliable: not-converged" in info["footnote"]


def test_unregistered_entries_export_with_nulls(store: Store, tmp_path: Path) -> None:
    tiny = get_protocol("mnist-linf-tiny-v1")  # no AutoAttack; 12 stages; 4 of its 40 samples stored
    w = write_run(store, tiny, "gone-entry", {0: (3, None), 1: (5, 2), 2: (6, -1), 3: (1, 11)})
    empty = write_run(store, PROTO, "never-ran", {}, sha="cd" * 32)  # a run with no rows yet
    paths = export_json(store, {"toy-at": TOY}, tmp_path / "out")
    assert len(paths) == 2 and len({p.name for p in paths}) == 2
    info = load(paths[0])
    assert info["name"] == "gone-entry (stored name)" and info["number_forward_passes"] == 1
    for key in ("link", "authors", "venue", "architecture", "reported", "additional_data", "autoattack_acc"):
        assert info[key] is None, key
    assert info["dataset"] == "mnist" and info["eps"] == 0.3
    assert info["clean_acc"] == pytest.approx(75.0)
    # sample 1 falls at 0.1, sample 3 only at 0.4 (stage 11): samples 0 and 3 survive at the primary eps
    assert info["worst_case_acc"] == pytest.approx(w.acc("pgd-cw", 0.3)) == pytest.approx(50.0)
    assert info["gauntlet"]["worst_case_by_eps"]["0.4"] == pytest.approx(w.acc("pgd-cw", 0.4)) == pytest.approx(25.0)
    g = info["gauntlet"]
    assert g["registered"] is False and g["complete"] is False and g["n_evaluated"] == 4 and g["n_samples"] == 40
    assert "4 of 40 samples" in info["footnote"]
    none = load(paths[1])  # nothing measured: nulls, and still valid JSON (no NaN)
    assert none["gauntlet"]["run_id"] == empty.run_id
    assert none["clean_acc"] is None and none["worst_case_acc"] is None and none["external"] is None
    assert none["gauntlet"]["worst_case_by_eps"] == {}


def test_csv_has_every_row_and_round_trips(store: Store, tmp_path: Path) -> None:
    w = write_run(store, PROTO, "toy-at", OUTCOMES)
    (path,) = export_csv(store, tmp_path / "csv")
    assert path.name == f"toy-at--test-export-v1--run{w.run_id}.csv"
    text = path.read_text()
    assert text.count("\n") == len(w.rows) + 1 == 6 * 6 + 1  # header + clean + 5 stages x 6 samples
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        got = list(reader)
    keys = [(r["attack"], float(r["eps"]), int(r["sample"])) for r in got]
    assert keys == sorted(keys) and len(set(keys)) == len(w.rows)
    mine = {(r.attack, r.eps, r.sample): r for r in w.rows}

    def opt(cell: str, cast):  # empty cell -> None
        return None if cell == "" else cast(cell)

    for row in got:
        r = mine[(row["attack"], float(row["eps"]), int(row["sample"]))]
        assert (int(row["run_id"]), row["entry_id"], row["protocol"], row["fingerprint"]) == (
            w.run_id, "toy-at", "test-export-v1", PROTO.fingerprint)
        assert int(row["label"]) == r.label and opt(row["pred"], int) == r.pred
        for col in ("attacked", "success", "robust_after"):
            assert row[col] in ("0", "1") and bool(int(row[col])) == getattr(r, col)
        for col in ("linf", "l2", "l0", "score"):
            assert opt(row[col], float) == getattr(r, col)  # exact: floats are written with repr
        assert opt(row["detail"], str) == r.detail and row["rejected"] == ""
    assert any(row["l2"] for row in got) and any(row["detail"] == "apgd-ce" for row in got)


def test_export_dispatches_and_rejects_unknown_formats(store: Store, tmp_path: Path) -> None:
    write_run(store, PROTO, "toy-at", OUTCOMES)
    out = tmp_path / "new" / "folder"
    csv_paths = export(store, {"toy-at": TOY}, out, "csv")
    json_paths = export(store, {"toy-at": TOY}, out, "json")
    assert [p.suffix for p in csv_paths + json_paths] == [".csv", ".json"]
    assert all(p.parent == out and p.is_file() for p in csv_paths + json_paths)
    with pytest.raises(BenchError, match="unknown export format 'xml'") as exc:
        export(store, {}, tmp_path / "x", "xml")
    assert "\n" not in str(exc.value)

"""Results of record: a record restores its run's very rows, `bench record` writes one for an entry,
`bench leaderboard --from` builds the site from records alone, and a damaged record is a one-line error."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from bench import api
from bench.api import _same_evaluation, _same_training
from bench.cli.app import app
from bench.errors import BenchError
from bench.report.export import csv_row
from bench.report.record import (
    FORMAT,
    RECORD_PROTOCOLS,
    Survivors,
    _floats,
    _unfloats,
    build_record,
    dumps,
    import_record,
    missing_records,
    read_record,
    record_file,
    record_path,
)
from bench.store.database import Store
from tests.sites import PRETRAINED, site_body


def csv_rows(store: Store, run_id: int) -> list[list[str]]:
    run = store.run(run_id)
    return [[str(v) for v in csv_row(run, r)] for r in store.results(run_id)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(records folder, workspace): `bench record` of a pretrained entry under the tiny protocol."""
    root = tmp_path_factory.mktemp("records")
    home, results = root / "ws", root / "results"
    entry = root / "frozen.py"
    entry.write_text(PRETRAINED)
    runner = CliRunner()
    assert runner.invoke(app, ["submit", str(entry), "--home", str(home)]).exit_code == 0
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["record", "frozen-linear", "--protocol", "mnist-linf-tiny-v1", "--budget", "tiny",
                                     "--out", str(results), "--home", str(home)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "record:" in result.output
    return results, home


def test_a_record_restores_its_runs_rows_exactly(recorded: tuple[Path, Path]) -> None:
    results, home = recorded
    store = Store(home / "gauntlet.db")
    [run] = store.runs()
    path = record_path(results, run)
    assert path == results / "mnist-linf-tiny-v1" / "frozen-linear.pretrained.json" and path.is_file()
    record = read_record(path)
    prov = record["provenance"]
    assert record["format"] == FORMAT
    assert (prov["fingerprint"], prov["checkpoint_sha256"], prov["threads"]) == (run.fingerprint,
                                                                               run.checkpoint_sha256, 1)
    assert prov["torch"] == md.version("torch") and prov["code_version"] == run.code_version and prov["check_suite"]
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # the file is the record of the stored run, written deterministically
    assert prov["weights_sha256"] == run.checkpoint_sha256  # a pretrained model's id is its weights' sha256
    assert path.read_text() == dumps(build_record(store, run.id, record["model_info"], 1, prov["weights_sha256"]))
    copy = Store("sqlite://")
    run_id = import_record(copy, record)
    assert csv_rows(copy, run_id) == csv_rows(store, run.id)
    assert [tuple(getattr(s, c) for c in ("attack", "eps", "chunk_start", "n_broken", "seed")) for s in
            copy.stages(run_id)] == [tuple(getattr(s, c) for c in ("attack", "eps", "chunk_start", "n_broken", "seed"))
                                     for s in store.stages(run.id)]
    assert Survivors.of_record(record) == Survivors.of_run(store, run.id) == Survivors.of_run(copy, run_id)
    assert api.report(run_id, store=copy).worst_case == api.report(run.id, store=store).worst_case
    with pytest.raises(BenchError, match="already holds"):
        import_record(copy, record)


def test_the_site_builds_from_records_alone(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    results, home = recorded
    result = CliRunner().invoke(app, ["leaderboard", "--from", str(results), "--out", str(tmp_path / "site"),
                                      "--home", str(home)])
    assert result.exit_code == 0, result.output
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Frozen linear" in index
    from_db = api.leaderboard(home=home, out=tmp_path / "db-site")
    assert "the records in results/" in index and "gauntlet.db" in from_db.read_text()

    body = site_body
    assert body(from_db.read_text()) == body(index)  # the same site as from the database
    for page in (tmp_path / "db-site").rglob("*.html"):
        assert body(page.read_text()) == body((tmp_path / "site" / page.relative_to(tmp_path / "db-site")).read_text())


def _duplicate_cell(text: str) -> str:
    """The clean cell again under another spelling of its key (two rows per sample: the store refuses them)."""
    record = json.loads(text)
    cells = record["tables"]["results"]
    cells["clean@0"] = cells["clean@0.0"]
    return json.dumps(record)


def _edit(section: str, key: str, value: object) -> Callable[[str], str]:
    """A damage: one value of a record's section replaced (valid JSON, a record of the right format)."""

    def damage(text: str) -> str:
        record = json.loads(text)
        part = record
        for name in section.split("."):
            part = part[name]
        part[key] = value
        return json.dumps(record)

    return damage


def _survivor_added(text: str) -> str:
    """One more survivor in a cell than its per-sample rows say: the board and the regression suite would
    read two different numbers from one record."""
    record = json.loads(text)
    key = next(k for k in record["survivors"] if not k.startswith("clean"))
    record["survivors"][key] = format(int(record["survivors"][key], 16) ^ 1, "x")
    return json.dumps(record)


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "cannot read record"),
    (lambda text: json.dumps({"format": "other"}), "is not a Gauntlet record"),
    (lambda text: text.replace('"labels"', '"labelz"'), "is damaged"),
    (_duplicate_cell, "is damaged"),
    (_edit("tables.run", "protocol_json", "{}"), "is damaged: ValueError: its protocol has no"),
    (_edit("tables.run", "packages", "not json"), "is damaged: JSONDecodeError"),
    (_edit("provenance", "fingerprint", "0" * 16), "two protocol fingerprints"),
    (_survivor_added, "its survivors differ from its per-sample rows"),
])
def test_a_damaged_record_is_a_one_line_error(recorded: tuple[Path, Path], tmp_path: Path, damage, message) -> None:
    results, home = recorded
    [path] = results.rglob("*.json")
    bad = tmp_path / "bad" / "x.json"
    bad.parent.mkdir()
    bad.write_text(damage(path.read_text()))
    result = CliRunner().invoke(app, ["leaderboard", "--from", str(bad.parent), "--out", str(tmp_path / "site"),
                                      "--home", str(home)])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_empty_records_folder_is_an_error_not_an_empty_board(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    result = CliRunner().invoke(app, ["leaderboard", "--from", str(tmp_path / "results"), "--out",
                                      str(tmp_path / "site"), "--home", str(tmp_path / "ws")])
    assert result.exit_code == 1 and "no records (*.json) under" in result.output
    assert not (tmp_path / "site").exists()


def test_the_repositorys_records_are_traceable() -> None:
    """Each result of record under results/ names a committed code version (never a dirty tree), one torch
    thread (what the regression suite reproduces exactly), and lives where `bench record` writes it."""
    root = Path(__file__).resolve().parents[1] / "results"
    paths = sorted(root.rglob("*.json"))
    assert paths
    for path in paths:
        record = read_record(path)
        prov = record["provenance"]
        assert record["tables"]["run"]["device"].endswith(" 1 threads)"), f"{path.name}: evaluated with other threads"
        assert not prov["code_version"].endswith(".dirty"), f"{path.name}: made from an uncommitted tree"
        assert "+g" in prov["code_version"], f"{path.name}: no commit in {prov['code_version']}"
        assert prov["threads"] == 1 and prov["fingerprint"] and prov["checkpoint_sha256"], path.name
        assert path == record_file(root, prov["protocol"], prov["entry"], prov["budget"], prov["seed"])


def test_a_record_states_only_the_conditions_its_numbers_came_from(recorded: tuple[Path, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored run was evaluated with one torch thread: recording it as two is refused in one line
    (the regression suite would re-evaluate with two and find other rows), before any evaluation resumes
    it (an hour of stages under another thread count, mixed into its run), and the record stays whole."""
    results, home = recorded
    [path] = sorted(results.rglob("*.json"))
    before = path.read_bytes()

    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before the stored run's thread count was checked")

    monkeypatch.setattr(api, "evaluate", no_evaluation)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["record", "frozen-linear", "--protocol", "mnist-linf-tiny-v1", "--budget",
                                          "tiny", "--out", str(results), "--home", str(home), "--threads", "2"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 1
    assert "evaluated with 1 torch thread(s), this record would state 2" in result.output
    assert len(result.output.strip().splitlines()) == 1 and path.read_bytes() == before
    with pytest.raises(BenchError, match="checkpoint was trained with 2 torch thread"):
        _same_training("e", {"torch_threads": "2", "torch": torch.__version__}, 1, torch.__version__)
    with pytest.raises(BenchError, match="trained under torch 0.1"):
        _same_training("e", {"torch_threads": "1", "torch": "0.1"}, 1, torch.__version__)
    _same_training("e", {"torch_threads": "1", "torch": torch.__version__}, 1, torch.__version__)
    with pytest.raises(BenchError, match="evaluated under torch 0.2"):
        _same_evaluation("e", SimpleNamespace(id=1, device="cpu (x86_64, 1 threads)", packages='{"torch": "0.2"}'), 1)
    _same_evaluation("e", SimpleNamespace(id=1, device="cpu (x86_64, 1 threads)",
                                          packages=json.dumps({"torch": md.version("torch")})), 1)


def test_every_missing_record_is_listed_with_its_protocol() -> None:
    """results/README.md names each built-in entry whose record is not under results/ (missing_records)
    in its protocol's line of the Missing section, where it says why."""
    root = Path(__file__).resolve().parents[1] / "results"
    text = (root / "README.md").read_text()
    missing_section = text[text.index("\nMissing"):]
    lines = {p: m.group(1) for p in RECORD_PROTOCOLS
             if (m := re.search(rf"^- `{p}`:(.*?)(?=^- |\Z)", missing_section, re.S | re.M))}
    for protocol, entry in missing_records(root):
        assert re.search(rf"(?<![\w-]){re.escape(entry)}(?![\w-])", lines.get(protocol, "")), (protocol, entry)


def test_infinite_and_nan_floats_survive_a_record() -> None:
    """Strict JSON has no infinity or NaN (a detector's score can be either): they are written by name and
    read back as the same floats, so that a run hours long is not lost at its record's write."""
    values = [0.25, 1e300, float("inf"), float("-inf"), float("nan"), None]
    column = json.loads(dumps({"score": _floats(values)}))["score"]
    back = _unfloats(column, len(values))
    assert back[:4] == values[:4] and math.isnan(back[4]) and back[5] is None  # type: ignore[arg-type]

"""Every registered entry is well-formed, and (slow) trains with its tiny budget and evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli.app import app
from bench.models.checkpoints import recipe_hash
from bench.protocol.data import DATASETS
from defenses.architectures import ARCHITECTURES
from registry import ALL_BUILTIN


@pytest.mark.parametrize("entry", ALL_BUILTIN, ids=lambda e: e.id)
def test_entry_is_well_formed(entry) -> None:
    if entry.wraps is not None:  # test-time defense: its base entry carries the recipe
        assert entry.wraps in {e.id for e in ALL_BUILTIN} and entry.kind in ("test-time", "detector")
        assert set(entry.architectures) <= set(next(e for e in ALL_BUILTIN if e.id == entry.wraps).architectures)
        return
    assert entry.recipe is not None
    for dataset, arch in entry.architectures.items():
        assert dataset in DATASETS and (arch in ARCHITECTURES or callable(arch))
        assert entry.recipe.budget(dataset, "paper") is not None, "every entry carries the paper's budget"
        assert entry.recipe.budget(dataset, "paper").source, "and says where its values come from"
    assert entry.recipe.budget("mnist", "quick") is not None and entry.recipe.budget("mnist", "tiny") is not None
    for claim in entry.claims:
        assert claim.table and claim.dataset in entry.architectures
    assert len({recipe_hash(entry, "mnist", b, 0) for b in ("paper", "quick", "tiny")}) == 3


def test_entry_ids_are_unique() -> None:
    ids = [e.id for e in ALL_BUILTIN]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
@pytest.mark.parametrize("entry", ALL_BUILTIN, ids=lambda e: e.id)
def test_entry_trains_and_evaluates(entry, tmp_path: Path) -> None:
    home = str(tmp_path / "ws")
    runner = CliRunner()
    result = runner.invoke(app, ["train", entry.id, "--budget", "tiny", "--home", home])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", entry.id, "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1",
                                 "--home", home])
    assert result.exit_code == 0, result.output
    assert "40/40 samples" in result.output

"""Every registered entry is well-formed, and (slow) trains with its tiny budget and evaluates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli.app import app
from bench.models.checkpoints import recipe_hash
from bench.protocol.data import DATASETS
from defenses.architectures import ARCHITECTURES
from registry import ALL_BUILTIN, get_entry
from registry.builtin import PNML

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"  # ../shared/papers beside the checkout


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


def test_standard_is_the_baseline_of_the_paper_it_reproduces() -> None:
    """Plain training is no paper's contribution: the entry names the paper whose 'Standard' baseline it
    reproduces (pNML, 004) and claims no venue or year, and that paper holds its recipe and its numbers."""
    entry = get_entry("standard")
    paper = entry.paper
    assert paper.venue == "baseline" and not re.search(r"(19|20)\d\d", paper.venue + paper.title)
    assert (paper.authors, paper.url, paper.file) == (PNML.authors, PNML.url, PNML.file)
    assert paper.title.endswith(PNML.title) and "baseline" in paper.title
    text = (PAPERS / paper.file).read_text()
    rows = [line for line in text.splitlines() if "\tStandard\t" in line]  # Table 1's undefended models
    for claim in entry.claims:
        assert any(row.startswith(claim.dataset.upper()) and f"Standard\t{claim.clean:g}%" in row
                   and f"{claim.robust:g}%" in row for row in rows), claim
    mnist = entry.recipe.budget("mnist", "paper")
    assert (mnist.epochs, mnist.lr, mnist.momentum, mnist.weight_decay, mnist.batch_size) == (100, 0.01, 0.9, 1e-4, 50)
    assert ("We trained the standard model for 100 epochs with natural training set. We used SGD with a learning "
            "rate of 0.01, a momentum value of 0.9, a weight decay of 0.0001, and a batch size of 50.") in text


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
    # training and evaluation mechanics per entry; escalation is tested on known-answer models and the zoo
    result = runner.invoke(app, ["evaluate", entry.id, "--budget", "tiny", "--protocol", "mnist-linf-tiny-v1",
                                 "--home", home, "--no-escalation"])
    assert result.exit_code == 0, result.output
    assert "40/40 samples" in result.output

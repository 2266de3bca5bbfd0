"""Gauntlet's pytest plugin, installed with the package (the ``pytest11`` entry point ``gauntlet``).

It gives a defense author's tests the ``gauntlet`` fixture, which evaluates a model or an entry under
a protocol with one torch thread (the thread count records of record use: same seed, same rows) in
a store of the test's own, and registers the ``regression`` marker. The assertions live in
:mod:`bench.testing`::

    from bench.testing import assert_robust

    def test_holds(gauntlet):
        assert_robust(gauntlet.evaluate(model, "mnist-linf-quick-v1"), eps=0.3, at_least=45.0)

``--gauntlet-home`` (or ``$GAUNTLET_HOME``) names the workspace whose trained checkpoints an entry
reuses; by default each test trains into a temporary one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # torch and Gauntlet load with the fixture, not with every pytest run of the environment
    from torch import nn

    from bench.protocol.protocols import Protocol
    from bench.report.run_report import RunReport
    from bench.store.database import Store


class Gauntlet:
    """Evaluate with one torch thread into ``store`` (a SQLite file of the test's own)."""

    def __init__(self, store: Store, home: Path, threads: int = 1) -> None:
        self.store, self.home, self.threads = store, home, threads

    def evaluate(self, model_or_entry: nn.Module | str, protocol: str | Protocol = "mnist-linf-quick-v1", *,
                 budget: str = "quick", seed: int = 0, **kwargs: Any) -> RunReport:
        """Train an entry if its checkpoint is missing, then :func:`bench.api.evaluate` it (or a bare model)."""
        import torch

        from bench import api
        from bench.orchestration.jobs import needs_training
        from bench.protocol.protocols import Protocol, get_protocol
        from bench.store.workspace import Workspace

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            if isinstance(model_or_entry, str):
                if needs_training(Workspace.resolve(self.home), model_or_entry):
                    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
                    api.train(model_or_entry, proto.dataset, budget, seed, home=self.home)
                return api.evaluate(model_or_entry, protocol, store=self.store, home=self.home, budget=budget,
                                    seed=seed, **kwargs)
            return api.evaluate(model_or_entry, protocol, store=self.store, home=self.home, **kwargs)
        finally:
            torch.set_num_threads(before)

    def assert_matches_record(self, report: RunReport, record: str | Path | dict[str, Any], tolerance: int = 0
                              ) -> None:
        """:func:`bench.testing.assert_matches_record` on a run of this fixture's store."""
        from bench.testing import assert_matches_record

        assert_matches_record(report, record, store=self.store, tolerance=tolerance)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gauntlet-home", default=None,
                     help="Gauntlet workspace whose checkpoints the gauntlet fixture reuses (default: a temporary one)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "regression: compares evaluations with Gauntlet's results of record")


@pytest.fixture
def gauntlet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gauntlet]:
    """A :class:`Gauntlet` evaluating into ``tmp_path``'s store, with checkpoints in ``--gauntlet-home``."""
    home = request.config.getoption("gauntlet_home") or os.environ.get("GAUNTLET_HOME") or tmp_path / "gauntlet"
    from bench.store.database import Store

    store = Store(tmp_path / "gauntlet-results.db")
    yield Gauntlet(store, Path(home))
    store.engine.dispose()

"""The Python API: the README's block runs as written, a bare model is evaluated in an in-memory
store, runs resume, bad input is a one-line error, and a pretrained entry goes through the demo plan."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import api
from bench.checks.suite import CHECKS
from bench.errors import BenchError
from bench.protocol.data import load_split
from bench.protocol.protocols import get_protocol
from bench.store.database import Store
from tests.sites import PRETRAINED

ROOT = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    """The Python block that follows the README's api-example marker."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no marked Python API block"
    return match.group(1)


def clean_accuracy(model: nn.Module, n: int) -> float:
    x, y = load_split("mnist", "test")
    with torch.no_grad():
        return 100.0 * float((model(x[:n]).argmax(1) == y[:n]).float().mean())


def test_readme_block_runs_and_reports_what_the_model_does(workspace: Path) -> None:
    torch.manual_seed(0)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_block(), "README.md", "exec"), namespace)
    report, model = namespace["report"], namespace["model"]
    proto = get_protocol("mnist-linf-tiny-v1")
    assert report.protocol == proto.name and report.fingerprint == proto.fingerprint
    assert report.complete and report.n_samples == proto.n_samples
    assert report.clean_accuracy == pytest.approx(clean_accuracy(model, proto.n_samples))  # computed apart
    assert sorted(report.worst_case) == sorted(proto.epsilons)
    worst = [report.worst_case[e] for e in sorted(proto.epsilons)]
    assert worst == sorted(worst, reverse=True) and worst[0] <= report.clean_accuracy  # nested balls
    assert {c.name for c in report.checks} == set(CHECKS)  # the checks ran and were stored
    assert report.ranked_accuracy is not None and report.ranked_accuracy <= report.worst_case[0.3]
    assert "worst case" in printed.getvalue() and str(report.clean_accuracy) in printed.getvalue()
    assert not (workspace / "gauntlet.db").exists()  # a bare model stays in memory


def test_bare_model_resumes_in_a_given_store(tmp_path: Path, workspace: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    db = tmp_path / "runs.db"
    first = api.evaluate(model, "mnist-linf-tiny-v1", store=str(db), name="lin", stop=20, checks=False)
    assert not first.complete and first.summary.n_evaluated == 20 and first.checks == ()
    second = api.evaluate(model, "mnist-linf-tiny-v1", store=str(db), name="lin")
    assert second.run_id == first.run_id and second.complete and second.checks  # same run, finished and checked
    store = Store(db)
    assert len(store.runs()) == 1 and store.runs()[0].entry_id == "lin"
    again = api.check(model, "mnist-linf-tiny-v1", store=store, name="lin")
    assert again.worst_case == second.worst_case and again.cells == second.cells
    assert [r.run_id for r in api.reports("lin", store=store)] == [first.run_id]


class Scale(nn.Module):
    """A parameter-free model: flatten and scale (its identity cannot come from weights)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x.flatten(1)[:, :10]


def test_the_callers_model_is_left_as_it_was(workspace: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    api.evaluate(model, "mnist-linf-tiny-v1", stop=20, checks=False)
    assert model.training and all(p.requires_grad for p in model.parameters())  # not frozen, not in eval mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_parameter_free_models_do_not_share_a_run(tmp_path: Path, workspace: Path) -> None:
    db = str(tmp_path / "runs.db")
    plus = api.evaluate(Scale(1.0), "mnist-linf-tiny-v1", store=db, stop=20, checks=False)
    minus = api.evaluate(Scale(-1.0), "mnist-linf-tiny-v1", store=db, stop=20, checks=False)
    assert plus.run_id != minus.run_id  # same name, no weights: their settings tell them apart
    again = api.evaluate(Scale(1.0), "mnist-linf-tiny-v1", store=db, stop=20, checks=False)
    assert again.run_id == plus.run_id and again.cells == plus.cells  # the same model resumes its run


def test_bad_input_is_a_one_line_error(workspace: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(BenchError, match="unknown entry 'no-such-entry'"):
        api.evaluate("no-such-entry", "mnist-linf-tiny-v1")
    with pytest.raises(BenchError, match=r"logits of shape \(2, classes\), not \(2, 1, 28, 28\)"):
        api.evaluate(nn.Identity(), "mnist-linf-tiny-v1", name="images")
    with pytest.raises(BenchError, match=r"not \(2, 1\)"):
        api.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(784, 1)), "mnist-linf-tiny-v1")
    with pytest.raises(BenchError, match="fails on two mnist test images"):
        api.evaluate(nn.Linear(3, 10), "mnist-linf-tiny-v1")
    with pytest.raises(BenchError, match="no adaptive attack bpda; known: none"):
        api.evaluate(model, "mnist-linf-tiny-v1", adaptive=("bpda",))
    with pytest.raises(BenchError, match="entry id 'Not OK'"):
        api.evaluate(model, "mnist-linf-tiny-v1", name="Not OK")
    with pytest.raises(BenchError, match="unknown protocol"):
        api.evaluate(model, "no-such-protocol")
    with pytest.raises(BenchError, match="an entry declares them itself"):
        api.evaluate("standard", "mnist-linf-tiny-v1", randomized=True)
    with pytest.raises(BenchError, match="store it was evaluated in"):
        api.check(model, "mnist-linf-tiny-v1")


def test_demo_evaluates_a_pretrained_entry_without_training(tmp_path: Path, workspace: Path) -> None:
    path = tmp_path / "frozen.py"
    path.write_text(PRETRAINED)
    api.submit(path, home=workspace)
    tasks = api.demo_plan(["frozen-linear"], "mnist-linf-tiny-v1", "tiny", home=workspace)
    assert [t.kind for t in tasks] == ["evaluate", "evaluate", "check"]  # no training task
    result = api.demo(["frozen-linear"], protocol="mnist-linf-tiny-v1", budget="tiny", jobs_=1, home=workspace)
    r = result.reports["frozen-linear"]
    assert r.complete and r.checks and result.site.is_file()
    torch.manual_seed(3)
    assert r.clean_accuracy == pytest.approx(clean_accuracy(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), 40))

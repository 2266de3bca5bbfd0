"""The one PGD core (attacks.signed_gradient): its step-size rule, its hooks on known answers, and that no
other signed-gradient ascent loop exists in attacks/, defenses/ or bench/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.detector_aware import DetectorAwarePGD
from attacks.iterative import BIM, ILCM, LabelSmoothedPGD
from attacks.pgd import PGD
from attacks.signed_gradient import Scored, StepSize, signed_gradient_ascent
from bench.checks.probes import PGDSetting
from tests.conftest import Linear, optimal_margin

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "attacks" / "signed_gradient.py"


def _binary(n: int = 40, seed: int = 0) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(2, 64, generator=g), torch.zeros(2))
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _margin(model: nn.Module, y: torch.Tensor):
    def objective(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        z, t = logits, y[rows]
        return Scored(z.gather(1, (1 - t)[:, None]).squeeze(1) - z.gather(1, t[:, None]).squeeze(1))
    return objective


# ---------------------------------------------------------------- the step-size rule

def test_one_step_size_rule_with_each_attacks_declared_default() -> None:
    assert StepSize.resolve(0.02, None).alpha(0.3) == 0.02
    assert StepSize.resolve(None, 0.25).alpha(0.2) == 0.25 * 0.2
    assert StepSize.resolve(None, None, 0.1).alpha(0.3) == 0.1 * 0.3
    with pytest.raises(ValueError, match="exactly one"):
        StepSize.resolve(None, None)  # no declared default: the caller must choose
    with pytest.raises(ValueError, match="at most one"):
        StepSize.resolve(0.1, 0.1, 0.1)
    # each attack's default, as declared on it
    assert BIM(steps=10).alpha(0.05) == (1.0 / 10) * 0.05  # eps / steps
    assert ILCM(steps=4).alpha(0.3) == (1.0 / 4) * 0.3
    assert LabelSmoothedPGD(steps=40).alpha(0.1) == (2.0 / 40) * 0.1  # the paper's 2 eps / steps
    assert DetectorAwarePGD().alpha(0.3) == 0.1 * 0.3
    assert PGDSetting(20).alpha(0.3) == 0.1 * 0.3
    assert PGDSetting(20, step_size=0.01).alpha(0.3) == PGD(step_size=0.01).alpha(0.3) == 0.01
    assert PGDSetting(20, rel_step_size=0.25).alpha(0.2) == PGD(rel_step_size=0.25).alpha(0.2)
    with pytest.raises(ValueError, match="exactly one"):
        PGD()


# ---------------------------------------------------------------- the core on known answers

def test_one_full_step_reaches_the_closed_form_optimum_of_a_linear_model() -> None:
    """On a linear model the sign of the margin's gradient is constant: one step of size eps lands on the
    optimal corner of the ball-and-box, whose margin is the closed-form optimum."""
    model, x, y = _binary()
    eps = 0.1
    last = signed_gradient_ascent(model, x, x, eps, eps, 1, _margin(model, y), final=False)
    with torch.no_grad():
        z = model(last)
    reached = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)
    assert torch.allclose(reached, optimal_margin(model, x, y, eps), atol=1e-4)
    assert float((last - x).abs().max()) <= eps + 1e-6 and float(last.min()) >= 0 and float(last.max()) <= 1


def test_per_row_bounds_match_scalar_ones_bit_for_bit() -> None:
    model, x, y = _binary()
    scalar = signed_gradient_ascent(model, x, x, 0.1, 0.02, 7, _margin(model, y), final=False)
    rows = torch.full((x.shape[0], 1, 1, 1), 0.1), torch.full((x.shape[0], 1, 1, 1), 0.02)
    per_row = signed_gradient_ascent(model, x, x, rows[0], rows[1], 7, _margin(model, y), final=False)
    assert torch.equal(scalar, per_row)
    mixed = rows[0].clone()
    mixed[::2] = 0.0  # a zero radius pins a row to its clean input
    pinned = signed_gradient_ascent(model, x, x, mixed, rows[1], 7, _margin(model, y), final=False)
    assert torch.equal(pinned[::2], x[::2]) and torch.equal(pinned[1::2], scalar[1::2])


def test_early_stop_record_and_live_hooks() -> None:
    model, x, y = _binary()
    seen: list[tuple[int, list[int]]] = []
    success_at_start = torch.zeros(x.shape[0], dtype=torch.bool)
    success_at_start[:5] = True

    def objective(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        return Scored(_margin(model, y)(xa, logits, rows).objective, success_at_start[rows])

    def record(t: int, rows: torch.Tensor, xa: torch.Tensor, logits: torch.Tensor, s: Scored) -> None:
        assert not xa.requires_grad and not logits.requires_grad
        seen.append((t, rows.tolist()))

    last = signed_gradient_ascent(model, x, x, 0.1, 0.01, 3, objective, record=record, chunk=16,
                                  live=lambda t, rows: rows < 30)  # rows 30.. never attacked
    assert [t for t, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3]  # steps 0..3, two chunks of <= 16 rows each
    assert seen[0][1] == list(range(16)) and seen[1][1] == list(range(16, 30))
    assert seen[2][1] == list(range(5, 21))  # rows 0-4 succeeded at t=0 and left the batch
    assert torch.equal(last[:5], x[:5]) and torch.equal(last[30:], x[30:])
    assert not torch.equal(last[5:30], x[5:30])


def test_moves_freezes_rows_and_ends_the_loop_when_none_moves() -> None:
    model, x, y = _binary(n=6)
    calls: list[int] = []

    def moves(rows: torch.Tensor, xa: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        calls.append(len(calls))
        keep = torch.arange(6) >= len(calls)  # one more row freezes at every step
        return keep[rows]

    last = signed_gradient_ascent(model, x, x, 0.1, 0.01, 20, _margin(model, y), moves=moves, final=False)
    assert len(calls) == 6  # the 6th step would move nobody: the loop ends there
    for k in range(6):  # row k moved at the first k steps only, exactly as k free steps move it
        free = signed_gradient_ascent(model, x, x, 0.1, 0.01, k, _margin(model, y), final=False)
        assert torch.equal(last[k], free[k])
    assert torch.equal(last[0], x[0])


def test_finite_grad_ignores_infinite_gradient_entries() -> None:
    model, x, y = _binary(n=4)
    x = x * 0.5  # room to move up

    def objective(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        inf_at_0 = torch.where(torch.arange(64) == 0, float("inf"), 0.0)  # e.g. an exploding detector score
        return Scored(_margin(model, y)(xa, logits, rows).objective + (xa.flatten(1) * inf_at_0).sum(1))

    raw = signed_gradient_ascent(model, x, x, 0.1, 0.05, 2, objective, final=False)
    assert torch.allclose(raw.flatten(1)[:, 0], x.flatten(1)[:, 0] + 0.1)  # an infinite entry still steps
    kept = signed_gradient_ascent(model, x, x, 0.1, 0.05, 2, objective, final=False, finite_grad=True)
    assert torch.equal(kept.flatten(1)[:, 0], x.flatten(1)[:, 0])  # ... unless finite_grad zeroes it
    assert torch.equal(kept.flatten(1)[:, 1:], raw.flatten(1)[:, 1:])


# ---------------------------------------------------------------- one loop only

SIGN = ("sign", "sign_", "sgn")
LOOPS = (ast.For, ast.While, ast.AsyncFor)
ASSIGNS = (ast.Assign, ast.AugAssign, ast.AnnAssign)


def _takes_sign(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and ((isinstance(n.func, ast.Attribute) and n.func.attr in SIGN)
                                            or (isinstance(n.func, ast.Name) and n.func.id in SIGN))
               for n in ast.walk(node))


def _sign_loops(tree: ast.AST) -> list[int]:
    """Line numbers of the outermost loops that store a value built from a sign (x.sign(), torch.sign(x), ...):
    the mark of a signed-gradient step whose result is iterated. A loop that only uses a sign in passing
    (one refinement step per sample, as pnml's reference implementation) stores none."""
    found: list[int] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, LOOPS) and any(isinstance(n, ASSIGNS) and n.value is not None and _takes_sign(n.value)
                                           for n in ast.walk(node)):
            found.append(node.lineno)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_the_only_signed_gradient_loop_is_the_cores() -> None:
    found = {}
    for folder in ("attacks", "defenses", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = _sign_loops(ast.parse(path.read_text(), str(path)))
            if lines:
                found[str(path.relative_to(ROOT))] = lines
    assert list(found) == ["attacks/signed_gradient.py"], found
    assert len(found["attacks/signed_gradient.py"]) == 1
    # the detector is not vacuous: it sees a loop that steps by a sign, wherever it is nested
    assert _sign_loops(ast.parse("def f(x, g):\n    for _ in range(3):\n        if True:\n"
                                 "            x = x + 0.1 * torch.sign(g)\n")) == [2]
    assert _sign_loops(ast.parse("while True:\n    x[i] -= a * g.sign()\n")) == [1]
    assert CORE.exists()

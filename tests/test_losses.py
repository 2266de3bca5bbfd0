"""Training objectives against hand computations on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from defenses import losses


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


LC = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LA = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.2, 1.0]])
Y = torch.tensor([0, 1])


def _ce(row: list[float], y: int) -> float:
    return -math.log(_softmax(row)[y])


def _kl(p_row: list[float], q_row: list[float]) -> float:
    p, q = _softmax(p_row), _softmax(q_row)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_pat() -> None:
    want = sum(0.3 * _ce(LC[i].tolist(), int(Y[i])) + 0.7 * _ce(LA[i].tolist(), int(Y[i])) for i in range(2)) / 2
    assert float(losses.pat(LC, LA, Y, 0.3)) == pytest.approx(want, rel=1e-6)


def test_trades() -> None:
    want = sum(_ce(LC[i].tolist(), int(Y[i])) + 4.0 * _kl(LC[i].tolist(), LA[i].tolist()) for i in range(2)) / 2
    assert float(losses.trades(LC, LA, Y, 4.0)) == pytest.approx(want, rel=1e-6)


def test_mart() -> None:
    total = 0.0
    for i in range(2):
        pa, pc = _softmax(LA[i].tolist()), _softmax(LC[i].tolist())
        y = int(Y[i])
        other = max(p for k, p in enumerate(pa) if k != y)
        bce = -math.log(pa[y]) - math.log(1 - other)
        total += bce + 5.0 * _kl(LC[i].tolist(), LA[i].tolist()) * (1 - pc[y])
    assert float(losses.mart(LC, LA, Y, 5.0)) == pytest.approx(total / 2, rel=1e-5)

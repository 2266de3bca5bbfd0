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


def _entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(row))


def test_entm_label_smoothing_and_logit_squeezing() -> None:
    rows, ys = LC.tolist(), Y.tolist()
    entm = sum(_ce(r, y) - 2.0 * _entropy(r) for r, y in zip(rows, ys, strict=True)) / 2
    assert float(losses.base_loss(LC, Y, entm=2.0)) == pytest.approx(entm, rel=1e-6)
    gamma = 0.74
    ls = 0.0
    for r, y in zip(rows, ys, strict=True):
        target = [(1 - gamma) * (k == y) + gamma / 3 for k in range(3)]
        ls += -sum(t * math.log(p) for t, p in zip(target, _softmax(r), strict=True))
    assert float(losses.base_loss(LC, Y, ls=gamma)) == pytest.approx(ls / 2, rel=1e-6)
    frob = math.sqrt(sum(v * v for r in rows for v in r))
    squeeze = (sum(_ce(r, y) for r, y in zip(rows, ys, strict=True)) + 0.5 * frob) / 2  # eq. 5 over a batch of 2
    assert float(losses.base_loss(LC, Y, squeeze=0.5)) == pytest.approx(squeeze, rel=1e-6)
    # uncertainty paper eq. 7: LS = (1 - g) CE + g KL(u || p) + g log C
    kl_u = sum(sum((1 / 3) * math.log((1 / 3) / p) for p in _softmax(r)) for r in rows) / 2
    ce_mean = sum(_ce(r, y) for r, y in zip(rows, ys, strict=True)) / 2
    assert ls / 2 == pytest.approx((1 - gamma) * ce_mean + gamma * kl_u + gamma * math.log(3), rel=1e-6)


def test_trades_entm_replaces_the_natural_ce() -> None:
    want = sum(_ce(LC[i].tolist(), int(Y[i])) - 2.0 * _entropy(LC[i].tolist())
               + 3.0 * _kl(LC[i].tolist(), LA[i].tolist()) for i in range(2)) / 2
    assert float(losses.trades(LC, LA, Y, 3.0, entm=2.0)) == pytest.approx(want, rel=1e-6)


def test_recipes_reject_unknown_parameters() -> None:
    from defenses.training import Recipe

    with pytest.raises(ValueError, match="no parameter"):
        Recipe("mart", {"beta": 1.0})


def test_rce_matches_hand_computation() -> None:
    # R_y puts 1/(L-1) = 1/2 on each false class: loss = -(log p_a + log p_b) / 2 per sample
    want = []
    for row, y in zip(LC.tolist(), Y.tolist(), strict=True):
        p = _softmax(row)
        want.append(-sum(math.log(p[j]) for j in range(3) if j != y) / 2)
    assert losses.rce(LC, Y).item() == pytest.approx(sum(want) / 2, rel=1e-6)


def test_mma_uses_margin_point_only_for_correct_inputs() -> None:
    # sample 0: clean argmax 0 == y -> CE at the margin point; sample 1: clean argmax 1 == y -> margin too
    assert losses.mma(LC, LA, Y).item() == pytest.approx((_ce(LA[0].tolist(), 0) + _ce(LA[1].tolist(), 1)) / 2)
    y_wrong = torch.tensor([2, 1])  # sample 0 misclassified -> its clean CE
    want = (_ce(LC[0].tolist(), 2) + _ce(LA[1].tolist(), 1)) / 2
    assert losses.mma(LC, LA, y_wrong).item() == pytest.approx(want, rel=1e-6)


def test_adp_diversity_and_entropy_match_hand_computation() -> None:
    members = torch.tensor([[[1.0, 0.0, 2.0, -1.0]], [[0.0, 1.0, 0.5, 0.5]]])  # K=2 members, B=1, L=4
    y = torch.tensor([2])
    probs = [_softmax(m[0].tolist()) for m in members]
    non_y = []
    for p in probs:
        v = [p[j] for j in range(4) if j != 2]
        n = math.sqrt(sum(a * a for a in v))
        non_y.append([a / n for a in v])
    dot = sum(a * b for a, b in zip(*non_y, strict=True))
    offset = 1e-6
    det = (1 + offset) * (1 + offset) - dot * dot  # Gram matrix [[1, d], [d, 1]] + offset I
    assert losses.ensemble_log_diversity(members, y, offset).item() == pytest.approx(math.log(det), rel=1e-5)
    mean_p = [(a + b) / 2 for a, b in zip(*probs, strict=True)]
    entropy = -sum(p * math.log(p) for p in mean_p)
    assert losses.ensemble_entropy(members).item() == pytest.approx(entropy, rel=1e-6)
    ce_sum = sum(-math.log(p[2]) for p in probs)
    want = ce_sum - 2.0 * entropy - 0.5 * math.log(det)
    assert losses.adp(members, y, 2.0, 0.5, offset).item() == pytest.approx(want, rel=1e-5)

"""Detectors: metric formulas, the threshold rule, reversed logits, and the engine's detector rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.engine.evaluate import EvalTarget, evaluate
from bench.protocol.data import load_split
from bench.report.summary import summarize
from bench.store.database import Store
from bench.store.summary import roc_auc
from defenses import losses
from defenses.detectors import DetectorClassifier, log_kernel_density, non_me, threshold_at_fpr
from registry import get_entry
from tests.conftest import Linear, small_protocol


def test_non_me_equals_its_formula() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    for row, got in zip(logits.tolist(), non_me(logits).tolist(), strict=True):
        e = [math.exp(v) for v in row]
        p = [v / sum(e) for v in e]
        top = max(range(4), key=lambda i: p[i])
        rest = [p[i] for i in range(4) if i != top]
        rest = [v / sum(rest) for v in rest]
        assert got == pytest.approx(-sum(v * math.log(v) for v in rest), rel=1e-6)


def test_kernel_density_equals_its_formula() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(12, 3, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    z = torch.randn(5, 3, generator=g)
    pred = torch.tensor([0, 1, 2, 2, 1])
    sigma2 = 0.7
    got = log_kernel_density(z, pred, ref, labels, sigma2)
    for i in range(5):
        members = [ref[j] for j in range(12) if labels[j] == pred[i]]
        kd = sum(math.exp(-float(((m - z[i]) ** 2).sum()) / sigma2) for m in members) / len(members)
        assert float(got[i]) == pytest.approx(math.log(kd), rel=1e-5)


@pytest.mark.parametrize(("n", "fpr"), [(1000, 0.05), (200, 0.05), (999, 0.1), (50, 0.0)])
def test_threshold_gives_the_declared_false_positive_rate(n: int, fpr: float) -> None:
    scores = torch.randperm(n).double() / 7.0  # distinct, in shuffled order
    t = threshold_at_fpr(scores, fpr)
    assert int((scores > t).sum()) == math.floor(fpr * n)


def test_roc_auc_counts_pairs() -> None:
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0], [2.0]) == 0.0
    assert roc_auc([1.0, 3.0], [2.0, 2.0]) == 0.5
    assert roc_auc([2.0], [2.0]) == 0.5


def test_reversed_logits_turn_an_rce_model_into_an_ordinary_classifier() -> None:
    x, y = load_split("mnist", "train")
    x, y = x[:2000].flatten(1), y[:2000]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(150):
        idx = torch.arange(step * 100, step * 100 + 100) % 2000
        loss = losses.rce(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = load_split("mnist", "test")
    xt, yt = xt[:500].flatten(1), yt[:500]
    with torch.no_grad():
        z = net(xt)
    # the RCE-trained network is a reverse classifier: its own argmax is (almost) never the label ...
    assert float((z.argmax(1) == yt).float().mean()) < 0.05
    # ... and its reversed logits give ordinary, accurate predictions
    model = DetectorClassifier(net, "nonme", reverse=True, n_ref=10)
    with torch.no_grad():
        assert float((model(xt).argmax(1) == yt).float().mean()) > 0.85
        # RCE makes the non-maximal probabilities near uniform: non-ME close to its maximum log 9
        assert float(non_me(model(xt)).mean()) > 0.9 * math.log(9)


def _linear_detector(linear: Linear, metric: str = "kd") -> DetectorClassifier:
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.copy_(linear.w)
        net[1].bias.copy_(linear.b)
    det = DetectorClassifier(net, metric, sigma2=20.0, n_ref=1000)
    x, y = load_split("mnist", "train")
    det.fit_reference(x[:3000], y[:3000])
    return det.eval()


def test_fit_reference_fills_buffers_and_eta_is_the_median(linear_mnist: Linear) -> None:
    det = _linear_detector(linear_mnist)
    x, y = load_split("mnist", "train")
    assert torch.equal(det.ref_labels, y[:1000])
    assert torch.allclose(det.ref_features, x[:1000].flatten(1))
    with torch.no_grad():
        held = det.detector_score(x[1000:2000])
    assert float(det.detector_eta) == pytest.approx(float(held.median()), rel=1e-5)
    clone = DetectorClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "kd", 20.0, n_ref=1000)
    clone.load_state_dict(det.state_dict())  # buffers travel with the checkpoint
    assert torch.equal(clone.detector_score(x[:5]), det.detector_score(x[:5]))


def test_engine_applies_the_detector_rule(tmp_path: Path, linear_mnist: Linear) -> None:
    det = _linear_detector(linear_mnist)
    store = Store(tmp_path / "d.db")
    protocol = small_protocol()
    target = EvalTarget(get_entry("ce-kd"), det, "linear-kd-test", "test", 0)
    run_id = evaluate(store, target, protocol)
    run = next(r for r in store.runs() if r.id == run_id)
    record = json.loads(run.detector_json)
    x_all, _ = load_split("mnist", "test")
    assert record["calibration"] == f"test[{x_all.shape[0] - 1000}:{x_all.shape[0]}]"
    assert record["calibration_rejection_rate"] == pytest.approx(0.05)  # the declared false-positive rate
    t = record["threshold"]
    rows = store.results(run_id)
    clean = [r for r in rows if r.attack == "clean"]
    assert all(r.rejected == (r.score > t) for r in clean)
    assert all(r.robust_after == (r.pred == r.label and not r.rejected) for r in clean)
    attacked = [r for r in rows if r.attack != "clean" and r.attacked]
    assert attacked and all(r.score is not None for r in attacked)
    assert all(r.success == (r.pred != r.label and not r.rejected) for r in attacked)
    # misclassified-but-rejected inputs stay alive: the next attack tries them again
    s = summarize(store, run)
    assert s.detector is not None and s.clean_rejection_rate is not None
    assert s.clean_acc == pytest.approx(100.0 * sum(r.robust_after for r in clean) / len(clean))
    assert s.detection_auc, "AUC per attack is computed from the stored scores"
    # a second evaluation of the same run keeps the stored threshold
    before = run.detector_json
    evaluate(store, target, protocol)
    assert next(r for r in store.runs() if r.id == run_id).detector_json == before


def test_detected_adversarial_inputs_do_not_count_as_successes(tmp_path: Path, linear_mnist: Linear) -> None:
    """With a confidence detector and a fixed FPR, some misclassified adversarial inputs are rejected."""
    det = _linear_detector(linear_mnist, metric="confidence")
    store = Store(tmp_path / "c.db")
    run_id = evaluate(store, EvalTarget(get_entry("ce-kd"), det, "linear-conf-test", "test", 0), small_protocol())
    rows = [r for r in store.results(run_id) if r.attack != "clean" and r.attacked]
    fooled_but_rejected = [r for r in rows if r.pred != r.label and r.rejected]
    assert fooled_but_rejected, "the test needs detected adversarial inputs"
    assert all(not r.success and r.robust_after for r in fooled_but_rejected)


def test_detector_score_is_differentiable(linear_mnist: Linear) -> None:
    det = _linear_detector(linear_mnist)
    x, _ = load_split("mnist", "test")
    xs = x[:4].clone().requires_grad_(True)
    grad = torch.autograd.grad(det.detector_score(xs).sum(), xs)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert F.softmax(det(xs), 1).shape == (4, 10)

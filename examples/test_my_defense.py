"""A defense author's regression test: Gauntlet's pytest plugin (installed with it) gives the `gauntlet` fixture."""
import torch
from torch import nn

from bench.protocol.data import load_split
from bench.testing import assert_robust


def test_my_model_keeps_its_robustness(gauntlet):
    torch.manual_seed(0)
    x, y = load_split("mnist", "train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # yours: trained, or loaded from a checkpoint
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(0, 6000, 100):  # (a quick fit, so that the example has a real model to test)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
        opt.step()
    report = gauntlet.evaluate(model, "mnist-linf-tiny-v1")  # one torch thread, its own store
    assert report.clean_accuracy >= 80.0
    assert_robust(report, eps=0.1, at_least=15.0)  # fails only if significantly below; names the attack

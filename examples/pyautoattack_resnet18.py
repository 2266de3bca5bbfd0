"""Example submission: the standard CIFAR-10 ResNet-18 shipped inside the pyautoattack wheel.

A model nobody here wrote, declared exactly as a researcher would declare theirs:

    bench submit examples/pyautoattack_resnet18.py
    bench evaluate pyautoattack-resnet18 --protocol cifar10-linf-quick-v1

Expected: about 94% clean accuracy and 0% robust accuracy (it is undefended).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from registry import Entry, Paper


def _examples_dir() -> Path:
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyautoattack is not installed")
    return Path(spec.origin).parent / "examples"


def load_model() -> nn.Module:
    """Build the wheel's ResNet18 (examples/resnet.py) and load examples/model_test.pt."""
    folder = _examples_dir()
    spec = importlib.util.spec_from_file_location("pyautoattack_example_resnet", folder / "resnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.ResNet18()
    state = torch.load(folder / "model_test.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


ENTRY = Entry(
    id="pyautoattack-resnet18",
    name="pyautoattack example ResNet-18 (undefended)",
    description="The standard CIFAR-10 ResNet-18 distributed with the AutoAttack code, as an outside submission.",
    paper=Paper("Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
                "Croce, Hein", "ICML 2020", "https://arxiv.org/abs/2003.01690"),
    kind="pretrained",
    architectures={"cifar10": "resnet18"},
    pretrained={"cifar10": load_model},
)

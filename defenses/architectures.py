"""Model factories used by the papers. Every model maps [0, 1] images to logits.

MNIST:
* ``madry-cnn``: Madry et al. (2018): conv 5x5/32, pool, conv 5x5/64, pool, FC 1024, FC 10
  (also the pNML paper's and Shafahi et al.'s MNIST network).
* ``small-cnn``: the TRADES/MART code bases' 4-conv MNIST CNN (32-32-64-64, FC 200-200-10).
* ``cnn4``: the uncertainty paper's four-layer CNN (conv 5x5/10, conv 5x5/20, FC 320-50-10; its
  appendix fragment gives the 320 and 50 widths).
CIFAR-10: ``preact-resnet18``, ``resnet18``, ``wrn-34-10`` and ``wrn-28-10`` (with an optional
per-channel normalisation inside the model, since inputs are always [0, 1]).
Both: ``resnet32`` / ``resnet56`` (He et al.'s 6n+2 CIFAR ResNets, 16-32-64 channels, used by the
RCE paper on MNIST and CIFAR-10; ``-mnist`` names take one input channel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from defenses.errors import DefenseError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so attacks always see [0, 1] inputs."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MadryCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(),
                                        nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 200), nn.ReLU(),
                                        nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CNN4(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(320, 50), nn.ReLU(), nn.Linear(50, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (He et al.); ``preact=True`` gives PreAct ResNet-18."""

    def __init__(self, num_classes: int = 10, preact: bool = False, normalize: bool = False) -> None:
        super().__init__()
        block = _PreActBlock if preact else _BasicBlock
        self.preact = preact
        self.norm = Normalize(CIFAR10_MEAN, CIFAR10_STD) if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [block(cin, cout, stride), block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn_final = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.norm(x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn_final(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class CifarResNet(nn.Module):
    """He et al.'s (2016) 6n+2-layer ResNet for small images: three stages of n basic blocks.

    The input is centred (x - 0.5), as the RCE paper scales pixels to [-0.5, 0.5].
    """

    def __init__(self, depth: int = 32, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n + 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x - 0.5)))
        out = F.adaptive_avg_pool2d(self.layers(out), 1).flatten(1)
        return self.linear(out)


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        short = x if self.equal else self.shortcut(o)  # type: ignore[misc]
        out = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return out + short


class WideResNet(nn.Module):
    """WideResNet-depth-widen (Zagoruyko & Komodakis), as in the TRADES/MART code bases."""

    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10, normalize: bool = False) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.norm = Normalize(CIFAR10_MEAN, CIFAR10_STD) if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(_WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(self.norm(x)))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "madry-cnn": MadryCNN,
    "small-cnn": SmallCNN,
    "cnn4": CNN4,
    "resnet18": lambda: ResNet18(),
    "preact-resnet18": lambda: ResNet18(preact=True),
    "wrn-34-10": lambda: WideResNet(34, 10),
    "wrn-28-10": lambda: WideResNet(28, 10),
    "resnet32": lambda: CifarResNet(32),
    "resnet56": lambda: CifarResNet(56),
    "resnet32-mnist": lambda: CifarResNet(32, in_channels=1),
    "resnet56-mnist": lambda: CifarResNet(56, in_channels=1),
}


def build_architecture(name: str) -> nn.Module:
    """Instantiate a registered architecture (weights initialised from torch's global RNG)."""
    try:
        return ARCHITECTURES[name]()
    except KeyError:
        raise DefenseError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None

"""MNIST and CIFAR-10 behind one interface: float images in [0, 1] (NCHW) and int64 labels.

Data root resolution (first that applies): the explicit ``data_dir`` argument (CLI ``--data-dir``),
the ``GAUNTLET_DATA_DIR`` environment variable, ``../shared/data`` next to the checkout when it
exists, else ``~/.cache/gauntlet/data``. Offline layouts read from that root:

* MNIST: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision layout);
* CIFAR-10: ``cifar10/cifar10_{train,test}.npz`` (uint8 ``x`` NHWC, ``y``), or torchvision's
  ``cifar-10-batches-py`` pickles.

With ``download=True`` torchvision downloads into the root as usual.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import REPO_ROOT
from bench.errors import BenchError

ENV_DATA_DIR = "GAUNTLET_DATA_DIR"
_download_allowed = False


def allow_download(flag: bool = True) -> None:
    """Let missing datasets be fetched by torchvision into the data root (CLI ``--download``)."""
    global _download_allowed
    _download_allowed = flag


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    n_train: int
    n_test: int


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, 60_000, 10_000),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, 50_000, 10_000),
}

_MNIST_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", 47_040_016),
    ("train", "labels"): ("train-labels-idx1-ubyte", 60_008),
    ("test", "images"): ("t10k-images-idx3-ubyte", 7_840_016),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", 10_008),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the facts for ``name`` or raise a one-line error listing the known datasets."""
    try:
        return DATASETS[name]
    except KeyError:
        raise BenchError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Pick the data root (see the module docstring for the order)."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (Path.home() / ".cache" / "gauntlet" / "data").resolve()


def load_split(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None, download: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as ``(images float32 [0,1] NCHW, labels int64)``; cached per process.

    ``download`` defaults to what :func:`allow_download` set (off): offline unless asked.
    """
    if download is None:
        download = _download_allowed
    dataset_info(name)
    if split not in ("train", "test"):
        raise BenchError(f"unknown split {split!r}; use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    return _load_cached(name, split, str(root), download)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, root: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    loader = _load_mnist if name == "mnist" else _load_cifar10
    x, y = loader(split, Path(root), download)
    info = DATASETS[name]
    expected = info.n_train if split == "train" else info.n_test
    if tuple(x.shape[1:]) != info.shape or x.shape[0] != expected or y.shape[0] != expected:
        raise BenchError(
            f"{name} {split} under {root} has shape {tuple(x.shape)} with {y.shape[0]} labels; "
            f"expected ({expected}, {', '.join(map(str, info.shape))}): the files look corrupt"
        )
    if int(y.min()) < 0 or int(y.max()) >= info.num_classes:
        raise BenchError(f"{name} {split} under {root} has labels outside 0..{info.num_classes - 1}")
    return x, y


def _load_mnist(split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    if not download:
        for kind in ("images", "labels"):
            fname, size = _MNIST_FILES[(split, kind)]
            path = raw / fname
            if not path.is_file():
                raise BenchError(
                    f"MNIST {split} not found: looked for {path}; set --data-dir or "
                    f"{ENV_DATA_DIR}, or pass --download"
                )
            if path.stat().st_size != size:
                raise BenchError(
                    f"MNIST file {path} is corrupt: {path.stat().st_size} bytes, expected {size}"
                )
    try:
        ds = MNIST(root=str(root), train=split == "train", download=download)
    except Exception as exc:  # torchvision raises RuntimeError/ValueError/OSError on bad files
        raise BenchError(f"could not read MNIST {split} under {raw}: {exc}".splitlines()[0]) from None
    x = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return x.contiguous(), ds.targets.to(torch.int64)


def _load_cifar10(split: str, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    npz = root / "cifar10" / f"cifar10_{split}.npz"
    if npz.is_file():
        try:
            with np.load(npz) as data:
                x_np, y_np = data["x"], data["y"]
        except Exception as exc:
            raise BenchError(f"CIFAR-10 file {npz} is corrupt: {exc}".splitlines()[0]) from None
        if x_np.ndim != 4 or x_np.shape[-1] != 3 or x_np.dtype != np.uint8:
            raise BenchError(f"CIFAR-10 file {npz} is corrupt: x has shape {x_np.shape} {x_np.dtype}")
        x = torch.from_numpy(x_np).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
        return x, torch.from_numpy(y_np.astype(np.int64))
    from torchvision.datasets import CIFAR10

    pickles = root / "cifar-10-batches-py"
    if not download and not pickles.is_dir():
        raise BenchError(
            f"CIFAR-10 {split} not found: looked for {npz} and {pickles}; set --data-dir or "
            f"{ENV_DATA_DIR}, or pass --download"
        )
    try:
        ds = CIFAR10(root=str(root), train=split == "train", download=download)
    except Exception as exc:
        raise BenchError(f"could not read CIFAR-10 {split} under {root}: {exc}".splitlines()[0]) from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64)

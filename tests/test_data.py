"""Datasets: offline loading from the data root, and one-line errors that say where we looked."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.protocol.data import load_split, resolve_data_dir


def test_mnist_and_cifar10_load_from_the_shared_root() -> None:
    x, y = load_split("mnist", "test")
    assert tuple(x.shape) == (10_000, 1, 28, 28) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the official test order
    xc, yc = load_split("cifar10", "test")
    assert tuple(xc.shape) == (10_000, 3, 32, 32) and yc[:5].tolist() == [3, 8, 8, 0, 6]


def test_missing_dataset_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as info:
        load_split("mnist", "test", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(BenchError, match="cifar10_test.npz"):
        load_split("cifar10", "test", data_dir=tmp_path)


def test_corrupt_mnist_file_is_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = resolve_data_dir() / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((src / name).read_bytes())
    with open(raw / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(BenchError, match="corrupt"):
        load_split("mnist", "test", data_dir=tmp_path)


def test_corrupt_cifar_npz_is_reported(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_test.npz").write_bytes(b"not a zip file")
    with pytest.raises(BenchError, match="corrupt"):
        load_split("cifar10", "test", data_dir=tmp_path)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUNTLET_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path.resolve()
    assert resolve_data_dir("/elsewhere") == Path("/elsewhere")


def test_download_flag_reaches_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Users with a network get torchvision's normal download into the data root."""
    import torch
    import torchvision.datasets

    from bench.protocol import data

    seen = {}

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            seen.update(root=root, download=download)
            self.data = torch.zeros(10_000, 28, 28, dtype=torch.uint8)
            self.targets = torch.zeros(10_000, dtype=torch.int64)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    data._load_cached.cache_clear()
    data.allow_download(True)
    try:
        x, _ = data.load_split("mnist", "test", data_dir=tmp_path)
    finally:
        data.allow_download(False)
        data._load_cached.cache_clear()
    assert seen == {"root": str(tmp_path.resolve()), "download": True} and x.shape[0] == 10_000

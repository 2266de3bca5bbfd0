"""The prepared GPU check (bench/benchmarks/gpu_check.py) runs end to end on the CPU in its smoke form, so the
script a GPU machine runs is known to work before a GPU is lent."""

from __future__ import annotations

import re

import pytest

from bench.benchmarks.gpu_check import main


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--smoke", "--device", "cpu", "--home", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^pyautoattack-resnet18 under cifar10-linf-quick-v2: \d+ s; clean \d", out, re.M), out
    assert re.search(r"^madry-pgd-at-short \(cifar10, 1 epochs\): trained in \d+ s", out, re.M), out
    assert re.search(r"^madry-pgd-at-short under cifar10-linf-quick-v2: \d+ s; clean", out, re.M), out
    assert out.count("attack stages") == 2 and "forward passes" in out
    assert re.search(r"^gpu-check: \d+ s in all", out, re.M), out


def test_gpu_check_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU here"):
        main(["--device", "cuda"])

"""Protocols are frozen: fingerprints are pinned and change with any field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.errors import BenchError
from bench.protocol.protocols import PROTOCOLS, AttackSpec, get_protocol

PINNED = {
    "mnist-linf-v1": "b952ad65772d8662",
    "mnist-linf-quick-v1": "d986895d99ed683a",
    "cifar10-linf-v1": "bc15115cb0eb4c45",
    "cifar10-linf-quick-v1": "2d2ed86137a95815",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_published_fingerprints_never_change(name: str) -> None:
    assert PROTOCOLS[name].fingerprint == PINNED[name]


def test_v1_protocols_follow_the_issue() -> None:
    m = get_protocol("mnist-linf-v1")
    assert (m.n_samples, m.epsilons, m.primary_eps) == (1000, (0.1, 0.2, 0.3, 0.4), 0.3)
    assert m.spec("pgd-ce").params["steps"] == 40 and m.spec("pgd-ce").params["step_size"] == 0.01
    c = get_protocol("cifar10-linf-v1")
    assert c.primary_eps == pytest.approx(8 / 255) and c.spec("pgd-ce").params["rel_step_size"] == 0.1
    assert get_protocol("mnist-linf-quick-v1").n_samples == 200 == get_protocol("cifar10-linf-quick-v1").n_samples


def test_any_change_changes_the_fingerprint() -> None:
    p = get_protocol("mnist-linf-quick-v1")
    assert replace(p, n_samples=201).fingerprint != p.fingerprint
    changed = (AttackSpec("fgsm", "fgsm", {}, seed=1),) + p.attacks[1:]
    assert replace(p, attacks=changed).fingerprint != p.fingerprint


def test_unknown_protocol_is_a_one_line_error() -> None:
    with pytest.raises(BenchError, match="unknown protocol 'nope'"):
        get_protocol("nope")


def test_the_randomized_rule_and_calibration_set_are_pinned() -> None:
    """Rules every protocol applies beside its fingerprinted fields: changing them needs a new version."""
    from bench.protocol.protocols import CALIBRATION_SAMPLES, RANDOMIZED_RULE

    assert dict(RANDOMIZED_RULE) == {"draws": 10, "min_correct": 6, "seed": 500}  # a majority of 10 draws
    assert RANDOMIZED_RULE["min_correct"] * 2 > RANDOMIZED_RULE["draws"]
    assert CALIBRATION_SAMPLES == 1000

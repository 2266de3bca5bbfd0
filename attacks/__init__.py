"""Attacks: each holds only hyperparameters and a seed; the model is an argument of every call."""

from attacks.autoattack import AutoAttackStandard
from attacks.base import Attack, AttackOutput, PassCounter, derive_seed
from attacks.fgsm import FGSM
from attacks.pgd import PGD

ATTACK_KINDS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "autoattack": AutoAttackStandard,
}


def make_attack(kind: str, params: dict, seed: int) -> Attack:
    """Build an attack from a protocol spec (kind, params, seed)."""
    try:
        cls = ATTACK_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown attack kind {kind!r}; known: {', '.join(ATTACK_KINDS)}") from None
    return cls(seed=seed, **params)


__all__ = ["ATTACK_KINDS", "Attack", "AttackOutput", "AutoAttackStandard", "FGSM", "PGD",
           "PassCounter", "derive_seed", "make_attack"]

"""The attack registry: one list of attack classes; every other list of attacks is derived from it.

Each class declares its ``name`` (the protocol's ``kind`` string), ``family``, ``norm``, ``kind``
and ``wrappable_by`` (see :mod:`attacks.base`). ``ATTACK_KINDS`` maps names to classes for
:func:`make_attack`; :func:`attack_labels` answers "which attacks are black-box?" for the checks;
:func:`wrappable_by` answers "which attacks may BPDA / EOT / a transfer attack run inside them?".
Adding an attack means writing its class and listing it in ``ATTACK_CLASSES``, nothing else.
"""

from __future__ import annotations

from attacks.adaptive import BPDA, EOT
from attacks.autoattack import AutoAttackStandard
from attacks.base import FAMILIES, KINDS, NORMS, Attack
from attacks.cw import CarliniWagnerHC, CarliniWagnerL2, CarliniWagnerWB
from attacks.detector_aware import DetectorAwarePGD
from attacks.fab import FABMinNorm
from attacks.fgsm import FGSM
from attacks.hopskipjump import HopSkipJump
from attacks.iterative import BIM, ILCM, LabelSmoothedPGD
from attacks.jsma import JSMA
from attacks.pgd import PGD
from attacks.random_search import RandomSearch
from attacks.spsa import SPSA
from attacks.square import SquareAttack
from attacks.transfer import Transfer

ATTACK_CLASSES: tuple[type[Attack], ...] = (
    FGSM, PGD, BIM, ILCM, LabelSmoothedPGD, AutoAttackStandard, RandomSearch, SPSA, HopSkipJump, SquareAttack,
    BPDA, EOT, CarliniWagnerL2, CarliniWagnerHC, CarliniWagnerWB, JSMA, FABMinNorm, Transfer, DetectorAwarePGD,
)
ATTACK_KINDS: dict[str, type[Attack]] = {cls.name: cls for cls in ATTACK_CLASSES}


def attack_labels(*kinds: str, family: str | None = None) -> frozenset[str]:
    """Names of the registered attacks of the given kinds (all kinds when none given), optionally of one family."""
    unknown = set(kinds) - set(KINDS) | ({family} - set(FAMILIES) if family is not None else set())
    if unknown:
        raise ValueError(f"unknown attack kind(s) or family {sorted(unknown)}; kinds: {KINDS}, families: {FAMILIES}")
    return frozenset(cls.name for cls in ATTACK_CLASSES
                     if (not kinds or cls.kind in kinds) and (family is None or cls.family == family))


def wrappable_by(wrapper: str) -> dict[str, type[Attack]]:
    """The registered attacks that a wrapper kind ("adaptive" or "transfer") may run inside it, by name."""
    return {cls.name: cls for cls in ATTACK_CLASSES if wrapper in cls.wrappable_by}


def make_attack(kind: str, params: dict, seed: int) -> Attack:
    """Build an attack from a protocol spec (kind, params, seed)."""
    try:
        cls = ATTACK_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown attack kind {kind!r}; known: {', '.join(ATTACK_KINDS)}") from None
    return cls(seed=seed, **params)


__all__ = ["ATTACK_CLASSES", "ATTACK_KINDS", "FAMILIES", "KINDS", "NORMS", "attack_labels", "make_attack",
           "wrappable_by"]

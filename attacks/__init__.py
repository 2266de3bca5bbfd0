"""Attacks: each holds only hyperparameters and a seed; the model is an argument of every call."""

from attacks.adaptive import BPDA, EOT
from attacks.autoattack import AutoAttackStandard
from attacks.base import Attack, AttackOutput, PassCounter, derive_seed
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

ATTACK_KINDS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "bim": BIM,
    "ilcm": ILCM,
    "pgd-ls-sweep": LabelSmoothedPGD,
    "autoattack": AutoAttackStandard,
    "random-search": RandomSearch,
    "spsa": SPSA,
    "hopskipjump": HopSkipJump,
    "square": SquareAttack,
    "bpda": BPDA,
    "eot": EOT,
    "cw-l2": CarliniWagnerL2,
    "cw-hc": CarliniWagnerHC,
    "cw-wb": CarliniWagnerWB,
    "jsma": JSMA,
    "fab-min-norm": FABMinNorm,
    "transfer": Transfer,
    "detector-aware-pgd": DetectorAwarePGD,
}


def make_attack(kind: str, params: dict, seed: int) -> Attack:
    """Build an attack from a protocol spec (kind, params, seed)."""
    try:
        cls = ATTACK_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown attack kind {kind!r}; known: {', '.join(ATTACK_KINDS)}") from None
    return cls(seed=seed, **params)


__all__ = ["ATTACK_KINDS", "BIM", "BPDA", "EOT", "ILCM", "SPSA", "Attack", "AttackOutput", "AutoAttackStandard", "FGSM",
           "HopSkipJump", "LabelSmoothedPGD", "PGD", "PassCounter", "RandomSearch", "SquareAttack", "derive_seed",
           "make_attack"]

"""Attacks: each holds only hyperparameters and a seed; the model (and an optional context) comes with each call.

Layout: :mod:`attacks.base` (the template ``Attack.run`` and shared helpers), :mod:`attacks.context`
(``AttackContext``), :mod:`attacks.signed_gradient` (the one PGD core and the step-size rule),
:mod:`attacks.min_norm` (the minimum-norm family), :mod:`attacks.registry` (the list of attack
classes and everything derived from it), one module per attack (or family of variants).
"""

from attacks.adaptive import BPDA, EOT
from attacks.autoattack import AutoAttackStandard
from attacks.base import Attack, AttackOutput, BatchResult, PassCounter, derive_seed
from attacks.context import AttackContext, SurrogateProvider
from attacks.cw import CarliniWagnerHC, CarliniWagnerL2, CarliniWagnerWB
from attacks.detector_aware import DetectorAwarePGD
from attacks.fab import FABMinNorm
from attacks.fgsm import FGSM
from attacks.hopskipjump import HopSkipJump
from attacks.iterative import BIM, ILCM, LabelSmoothedPGD
from attacks.jsma import JSMA
from attacks.min_norm import MinimumNormAttack, MinNormOutput
from attacks.pgd import PGD
from attacks.random_search import RandomSearch
from attacks.registry import ATTACK_CLASSES, ATTACK_KINDS, attack_labels, make_attack, wrappable_by
from attacks.spsa import SPSA
from attacks.square import SquareAttack
from attacks.transfer import Transfer

__all__ = ["ATTACK_CLASSES", "ATTACK_KINDS", "BIM", "BPDA", "EOT", "FGSM", "ILCM", "JSMA", "PGD", "SPSA", "Attack",
           "AttackContext", "AttackOutput", "AutoAttackStandard", "BatchResult", "CarliniWagnerHC", "CarliniWagnerL2",
           "CarliniWagnerWB", "DetectorAwarePGD", "FABMinNorm", "HopSkipJump", "LabelSmoothedPGD", "MinNormOutput",
           "MinimumNormAttack", "PassCounter", "RandomSearch", "SquareAttack", "SurrogateProvider", "Transfer",
           "attack_labels", "derive_seed", "make_attack", "wrappable_by"]

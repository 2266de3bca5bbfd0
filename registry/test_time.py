"""Test-time defenses: entries whose evaluated model wraps another entry's trained model."""

from __future__ import annotations

from registry.builtin import PNML
from registry.entry import Claim, Entry


def _pnml_wrapper(base, dataset: str):
    from defenses.pnml import AdversarialPNML

    return AdversarialPNML(base, lam=PNML_LAMBDA[dataset])


PNML_LAMBDA = {"mnist": 0.1, "cifar10": 0.03}  # pNML paper section 5.2

PNML_ENTRY = Entry(
    id="pnml",
    name="Adversarial pNML (on Madry PGD-AT)",
    description="Test-time refinement: one targeted sign-gradient step of strength lambda towards each label "
                "(lambda 0.1 on MNIST, 0.03 on CIFAR-10), keep that label's probability, normalise; wrapped "
                "around the madry-pgd-at entry.",
    paper=PNML, kind="test-time", architectures={"mnist": "madry-cnn", "cifar10": "resnet18"},
    wraps="madry-pgd-at", wrapper=_pnml_wrapper, forward_passes=2,
    adaptive_attacks=("bpda-identity", "hopskipjump"),
    claims=(
        Claim("mnist", "Linf", 0.3, "PGD", 97.8, 93.7, "pNML paper Table 1", "madry-cnn"),
        Claim("mnist", "Linf", 0.3, "adaptive (BPDA)", 97.8, 90.4, "pNML paper Table 1", "madry-cnn"),
        Claim("mnist", "Linf", 0.3, "HSJA", 97.8, 94.6, "pNML paper Table 1", "madry-cnn"),
        Claim("cifar10", "Linf", 0.031, "adaptive (BPDA)", 88.1, 66.4, "pNML paper Table 1",
              "wrn-28-10 (Carmon et al.)"),
    ),
    extra={"lambda": PNML_LAMBDA},
    notes="The wrapper's own gradient treats the refinement step as the identity (BPDA), the paper's adaptive "
          "attack, so plain PGD on it is already adaptive. Forward passes: about two forward and one backward "
          "pass per prediction.",
)


TEST_TIME_ENTRIES: tuple[Entry, ...] = (PNML_ENTRY,)

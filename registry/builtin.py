"""Built-in entries: the skeleton's four defenses of the papers plus PAT.

Hyperparameters come from ../shared/papers (file names in each Paper); where a paper is silent
the value is ours and the budget's ``source`` says so. Claims are copied from the papers' tables.
Quick budgets (CPU, MNIST) were chosen by measurement for robustness per CPU minute: Adam with a
one-cycle learning rate, a short PGD in training, and a linear epsilon ramp-up over the first
part of training (MNIST adversarial training stalls when started at the full eps 0.3).
"""

from __future__ import annotations

from defenses.training import Budget, Recipe
from registry.entry import Claim, Entry, Paper

MADRY = Paper("Towards Deep Learning Models Resistant to Adversarial Attacks", "Madry, Makelov, Schmidt, "
              "Tsipras, Vladu", "ICLR 2018", "https://arxiv.org/abs/1706.06083")
MART = Paper("Improving Adversarial Robustness Requires Revisiting Misclassified Examples", "Wang, Zou, Yi, "
             "Bailey, Ma, Gu", "ICLR 2020", "https://openreview.net/forum?id=rklOg6EFwS",
             "002_4365e093b9003f58.txt")
TRADES = Paper("Theoretically Principled Trade-off between Robustness and Accuracy", "Zhang, Yu, Jiao, Xing, "
               "El Ghaoui, Jordan", "ICML 2019", "https://arxiv.org/abs/1901.08573")
UNCERTAINTY = Paper("Rethinking Uncertainty in Deep Learning: Whether and How It Improves Robustness",
                    "Tian, Liu, Chen, Song, Li", "arXiv 2020", "https://arxiv.org/abs/2011.13538",
                    "000_2dab57ef017d8076.txt")
PNML = Paper("Utilizing Adversarial Targeted Attacks to Boost Adversarial Robustness", "Pesso, Bibas, "
             "Feder", "arXiv 2021", "https://arxiv.org/abs/2109.01945", "004_37b05f55427c11e4.txt")
# Plain training is no paper's method, so the undefended entry claims no venue or year: it is the
# baseline whose recipe (appendix A) and numbers (Table 1, 'Standard' rows) the pNML paper reports,
# and it links there. Shown as its venue on the board, "baseline" says what it is.
STANDARD_BASELINE = Paper("Standard (undefended) training: the 'Standard' baseline of Table 1 and appendix A in "
                          + PNML.title, PNML.authors, "baseline", PNML.url, PNML.file)

EPS8 = 8 / 255


def _cifar_at(source: str, lr: float = 0.01, wd: float = 3.5e-3, steps: int = 10,
              step: float = 2 / 255) -> Budget:
    # MART paper section 4.2 (Tables 2/3): ResNet-18, SGD momentum 0.9, lr 0.01, weight decay
    # 3.5e-3, lr / 10 at epochs 75 and 90; PGD-10, random start, step eps/4. Epoch count and batch
    # size (120, 128) from the MART code release, since the paper does not state them.
    return Budget(epochs=120, batch_size=128, lr=lr, momentum=0.9, weight_decay=wd, milestones=(75, 90),
                  eps=EPS8, attack_steps=steps, attack_step_size=step, augment=True, source=source)


def _quick_mnist(epochs: float, steps: int, step: float, lr: float = 2e-3, warmup: float = 0.3,
                 eps: float = 0.3) -> Budget:
    return Budget(epochs=epochs, batch_size=128, lr=lr, optimizer="adam", momentum=0.0, schedule="onecycle",
                  eps=eps, attack_steps=steps, attack_step_size=step, eps_warmup=warmup,
                  source="ours: CPU quick budget (see registry/builtin.py)")


_TINY = Budget(epochs=1, batch_size=64, lr=2e-3, optimizer="adam", momentum=0.0, schedule="constant", eps=0.3,
               attack_steps=1, attack_step_size=0.3, train_samples=512, source="ours: smoke tests only")


def _tiny(objective: str) -> Budget:
    if objective == "ce":
        return Budget(epochs=1, batch_size=64, lr=2e-3, optimizer="adam", momentum=0.0, schedule="constant",
                      train_samples=512, source="ours: smoke tests only")
    return _TINY


def _claims(dataset: str, arch: str, table: str, clean: float, fgsm: float, pgd20: float, cw: float,
            eps: float) -> tuple[Claim, ...]:
    return (
        Claim(dataset, "Linf", eps, "FGSM", clean, fgsm, table, arch),
        Claim(dataset, "Linf", eps, "PGD-20", clean, pgd20, table, arch),
        Claim(dataset, "Linf", eps, "CW-inf", clean, cw, table, arch),
    )


STANDARD = Entry(
    id="standard",
    name="Standard training",
    description="Plain cross-entropy training, no defense: the floor every defense must beat.",
    paper=STANDARD_BASELINE,
    kind="standard",
    architectures={"mnist": "madry-cnn", "cifar10": "resnet18"},
    recipe=Recipe("ce", {}, {
        "mnist": {
            # pNML paper appendix A: 100 epochs, SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 50.
            "paper": Budget(epochs=100, batch_size=50, lr=0.01, momentum=0.9, weight_decay=1e-4,
                            schedule="constant", source="pNML paper (004) appendix A"),
            "quick": Budget(epochs=0.25, batch_size=128, lr=2e-3, optimizer="adam", momentum=0.0,
                            schedule="onecycle", source="ours: CPU quick budget"),
            "tiny": _tiny("ce"),
        },
        "cifar10": {
            "paper": Budget(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                            milestones=(75, 90), augment=True,
                            source="ours: the papers train ResNet-18 without stating a CE schedule"),
            # the cifar10 quick protocols' undefended transfer surrogate (about 90% clean accuracy is plenty)
            "quick": Budget(epochs=3, batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="onecycle",
                            augment=True, source="ours: short GPU schedule (transfer surrogate)"),
        },
    }),
    claims=(
        Claim("mnist", "Linf", 0.3, "FGSM", 99.3, 0.6, "pNML paper Table 1", "madry-cnn"),
        Claim("mnist", "Linf", 0.3, "PGD", 99.3, 0.0, "pNML paper Table 1", "madry-cnn"),
        Claim("cifar10", "Linf", 0.031, "PGD", 93.6, 0.0, "pNML paper Table 1", "wrn-28-10"),
    ),
)

MADRY_AT = Entry(
    id="madry-pgd-at",
    name="PGD adversarial training (Madry et al.)",
    description="Cross-entropy on PGD adversarial examples (min-max training).",
    paper=MADRY,
    kind="adversarial-training",
    architectures={"mnist": "madry-cnn", "cifar10": "resnet18"},
    recipe=Recipe("madry", {}, {
        "mnist": {
            # Madry et al. MNIST challenge config: Adam 1e-4, batch 50, 100k steps (83.3 epochs),
            # PGD-40 step 0.01 in eps 0.3 with random start.
            "paper": Budget(epochs=100_000 * 50 / 60_000, batch_size=50, lr=1e-4, optimizer="adam",
                            momentum=0.0, schedule="constant", eps=0.3, attack_steps=40,
                            attack_step_size=0.01, source="Madry et al. (MNIST challenge config)"),
            "quick": _quick_mnist(epochs=0.5, steps=3, step=0.12, lr=4e-3),
            "tiny": _tiny("madry"),
        },
        "cifar10": {"paper": _cifar_at("MART paper (002) section 4.2, as its 'Standard' AT baseline"),
                    "quick": Budget(epochs=15, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                    schedule="onecycle", eps=EPS8, attack_steps=2, attack_step_size=4 / 255,
                                    augment=True, source="ours: short GPU schedule")},
    }),
    claims=_claims("mnist", "4-layer CNN", "MART paper Table 2 ('Standard')", 99.11, 97.17, 94.62, 94.25, 0.3)
    + _claims("cifar10", "resnet18", "MART paper Table 2 ('Standard')", 84.44, 61.89, 47.55, 45.98, EPS8)
    + (Claim("mnist", "Linf", 0.3, "adaptive (best attack)", 97.8, 89.8, "pNML paper Table 1", "madry-cnn"),),
)

PAT = Entry(
    id="pat",
    name="PAT (alpha-weighted PGD adversarial training)",
    description="alpha * CE(clean) + (1 - alpha) * CE(PGD adversarial), alpha = 0.5, as the uncertainty "
                "paper's PAT baseline.",
    paper=UNCERTAINTY,
    kind="adversarial-training",
    architectures={"mnist": "cnn4", "cifar10": "resnet18"},
    recipe=Recipe("pat", {"alpha": 0.5}, {
        "mnist": {
            # Uncertainty paper section 5: MNIST training attack eps 48/255, step 6/255, 10 steps.
            # Its optimiser table (Table 5) is lost in our copy: SGD settings are ours.
            "paper": Budget(epochs=50, batch_size=128, lr=0.01, momentum=0.9, milestones=(20, 40),
                            eps=48 / 255, attack_steps=10, attack_step_size=6 / 255,
                            source="uncertainty paper (000) section 5 (attack); optimiser ours"),
            "quick": _quick_mnist(epochs=0.42, steps=3, step=0.12),
            "tiny": _tiny("pat"),
        },
        "cifar10": {"paper": Budget(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                    milestones=(75, 90), eps=EPS8, attack_steps=7, attack_step_size=2 / 255,
                                    augment=True,
                                    source="uncertainty paper (000) section 5 (attack); optimiser ours")},
    }),
    claims=(),
    notes="The uncertainty paper's result tables are missing from our copy of the paper, so no absolute "
          "numbers are claimed here (it states that TRADES beats PAT on MNIST, appendix B).",
)

TRADES_ENTRY = Entry(
    id="trades",
    name="TRADES",
    description="CE(clean) + beta * KL(p(clean) || p(adv)), the adversarial input maximising the KL; "
                "beta = 4 as the MART paper configures it.",
    paper=TRADES,
    kind="adversarial-training",
    architectures={"mnist": "small-cnn", "cifar10": "resnet18"},
    recipe=Recipe("trades", {"beta": 4.0}, {
        "mnist": {
            # MART paper section 4.2: SGD momentum 0.9, lr 0.01 / 10 at epochs 20 and 40, PGD-10 step
            # eps/4 in eps 0.3; epochs (50) and batch (128) ours, as the paper does not give them.
            "paper": Budget(epochs=50, batch_size=128, lr=0.01, momentum=0.9, milestones=(20, 40), eps=0.3,
                            attack_steps=10, attack_step_size=0.075,
                            source="MART paper (002) section 4.2; epochs and batch ours"),
            "quick": _quick_mnist(epochs=0.4, steps=3, step=0.12),
            "tiny": _tiny("trades"),
        },
        "cifar10": {"paper": _cifar_at("MART paper (002) section 4.2 (TRADES baseline)")},
    }),
    claims=_claims("mnist", "4-layer CNN", "MART paper Table 2", 99.25, 96.67, 94.58, 94.03, 0.3)
    + _claims("cifar10", "resnet18", "MART paper Table 2", 82.90, 62.82, 50.25, 48.29, EPS8),
)

MART_ENTRY = Entry(
    id="mart",
    name="MART",
    description="BCE(adv) + lambda * KL(p(clean) || p(adv)) * (1 - p_y(clean)), lambda = 5 (MART paper "
                "section 4.2): misclassified examples get more weight.",
    paper=MART,
    kind="adversarial-training",
    architectures={"mnist": "small-cnn", "cifar10": "resnet18"},
    recipe=Recipe("mart", {"lambda": 5.0}, {
        "mnist": {
            "paper": Budget(epochs=50, batch_size=128, lr=0.01, momentum=0.9, milestones=(20, 40), eps=0.3,
                            attack_steps=10, attack_step_size=0.075,
                            source="MART paper (002) section 4.2; epochs and batch ours"),
            "quick": _quick_mnist(epochs=0.4, steps=3, step=0.12),
            "tiny": _tiny("mart"),
        },
        "cifar10": {"paper": _cifar_at("MART paper (002) section 4.2"),
                    "quick": Budget(epochs=15, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                    schedule="onecycle", eps=EPS8, attack_steps=2, attack_step_size=4 / 255,
                                    augment=True, source="ours: short GPU schedule")},
    }),
    claims=_claims("mnist", "4-layer CNN", "MART paper Table 2", 98.74, 97.87, 96.48, 96.10, 0.3)
    + _claims("cifar10", "resnet18", "MART paper Table 2", 83.07, 65.65, 55.57, 54.87, EPS8),
    notes="The MART paper does not give its MNIST 4-layer CNN's layers; we use the TRADES code base's "
          "SmallCNN, which the MART code builds on.",
)

def _mart_baseline_budgets() -> dict:
    return {
        "mnist": {"paper": Budget(epochs=50, batch_size=128, lr=0.01, momentum=0.9, milestones=(20, 40), eps=0.3,
                                  attack_steps=10, attack_step_size=0.075,
                                  source="MART paper (002) section 4.2; epochs and batch ours"),
                  "quick": _quick_mnist(epochs=0.4, steps=3, step=0.12), "tiny": _TINY},
        "cifar10": {"paper": _cifar_at("MART paper (002) section 4.2 (baseline)")},
    }


MMA_ENTRY = Entry(
    id="mma",
    name="MMA (max-margin adversarial training)",
    description="Correctly classified inputs: CE at the closest adversarial point found within the maximal "
                "margin (PGD at the margin, then bisection towards the input); misclassified inputs: CE on the "
                "clean input. Maximal margin 0.45 on MNIST, 12/255 on CIFAR-10, as the MART paper configures it.",
    paper=Paper("MMA Training: Direct Input Space Margin Maximization through Adversarial Training", "Ding, "
                "Sharma, Lui, Huang", "ICLR 2020", "https://arxiv.org/abs/1812.02637"),
    kind="adversarial-training",
    architectures={"mnist": "small-cnn", "cifar10": "resnet18"},
    recipe=Recipe("mma", {"max_margin": 0.45, "bisection_steps": 10}, _mart_baseline_budgets(),
                  {"cifar10": {"max_margin": 12 / 255}}),
    claims=_claims("mnist", "4-layer CNN", "MART paper Table 2 (MMA)", 98.92, 97.25, 95.25, 94.77, 0.3)
    + _claims("cifar10", "resnet18", "MART paper Table 2 (MMA)", 84.76, 62.08, 48.33, 45.77, EPS8),
    notes="The loss is the MART paper's Table 1 form of MMA. The margin search is PGD at the maximal margin "
          "followed by 10 bisection steps on the segment to the input (ours: the MMA paper's AN-PGD details are "
          "not in our papers folder). Budget: the MART paper's baseline schedule.",
)

DYNAMIC_ENTRY = Entry(
    id="dynamic",
    name="Dynamic adversarial training (FOSC-controlled)",
    description="PGD adversarial training whose inner maximisation stops per sample once its first-order "
                "stationarity (FOSC) reaches a criterion c_t that falls from c_max = 0.5 to 0: weak adversarial "
                "examples early, converged ones later.",
    paper=Paper("On the Convergence and Robustness of Adversarial Training", "Wang, Ma, Bailey, Yi, Zhou, Gu",
                "ICML 2019", "https://proceedings.mlr.press/v97/wang19i.html"),
    kind="adversarial-training",
    architectures={"mnist": "small-cnn", "cifar10": "resnet18"},
    recipe=Recipe("dynamic", {"c_max": 0.5, "c_ramp": 0.8}, _mart_baseline_budgets()),
    claims=_claims("mnist", "4-layer CNN", "MART paper Table 2 (Dynamic)", 98.96, 97.34, 95.27, 94.85, 0.3)
    + _claims("cifar10", "resnet18", "MART paper Table 2 (Dynamic)", 83.33, 62.47, 49.40, 46.94, EPS8),
    notes="c_max = 0.5 from the MART paper. The linear decrease of c_t to 0 over the first 80% of training is ours "
          "(the Dynamic paper's schedule is not in our papers folder).",
)

SURROGATE_PGD = Entry(
    id="surrogate-pgd",
    name="Transfer surrogate: PGD-AT on another architecture",
    description="The benchmark's own PGD-trained surrogate for the v2 protocols' transfer attacks (with the "
                "standard entry as the undefended one): Madry PGD-AT on the TRADES small CNN (MNIST) and PreAct "
                "ResNet-18 (CIFAR-10), architectures that differ from the standard surrogate's.",
    paper=MADRY, kind="adversarial-training",
    architectures={"mnist": "small-cnn", "cifar10": "preact-resnet18"},
    recipe=Recipe("madry", {}, {
        "mnist": {"paper": MADRY_AT.recipe.budget("mnist", "paper"),  # type: ignore[union-attr, dict-item]
                  "quick": _quick_mnist(epochs=0.5, steps=3, step=0.12, lr=4e-3), "tiny": _TINY},
        "cifar10": {"paper": _cifar_at("MART paper (002) section 4.2, as its 'Standard' AT baseline"),
                    "quick": Budget(epochs=3, batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4,
                                    schedule="onecycle", eps=EPS8, attack_steps=2, attack_step_size=4 / 255,
                                    augment=True, source="ours: short GPU schedule (transfer surrogate)")},
    }),
    notes="Papers transfer from a model of another architecture trained on the same data (uncertainty paper "
          "section 5, MART paper section 4.2); which one is ours.",
)

BUILTIN_ENTRIES: tuple[Entry, ...] = (STANDARD, MADRY_AT, PAT, TRADES_ENTRY, MART_ENTRY, MMA_ENTRY, DYNAMIC_ENTRY,
                                      SURROGATE_PGD)
DEMO_ENTRIES: tuple[str, ...] = ("standard", "madry-pgd-at", "trades", "mart")

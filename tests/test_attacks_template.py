"""The attack template: one ``run`` for every attack, class-level declarations the registries and checks read,
the explicit AttackContext, and pyautoattack's output captured instead of printed."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from attacks import adaptive, transfer
from attacks.base import FAMILIES, KINDS, NORMS, Attack, AttackContext, BatchResult
from attacks.library import quiet_library
from attacks.min_norm import MinimumNormAttack
from attacks.registry import ATTACK_CLASSES, ATTACK_KINDS, attack_labels, make_attack, wrappable_by
from bench.checks import suite as checks
from tests.conftest import Linear, Quantised

# The protocol's meaning of its kind strings, as the black-box-wins check has always read them.
LEGACY_BLACK_BOX = {"transfer", "random-search", "spsa", "hopskipjump", "square"}
LEGACY_WHITE_BOX = {"fgsm", "pgd", "bim", "ilcm", "autoattack", "pgd-ls-sweep", "bpda", "eot", "detector-aware-pgd"}


# ---------------------------------------------------------------- one run, declared on the class

@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.name)
def test_no_attack_overrides_the_template(cls: type[Attack]) -> None:
    assert cls.run is Attack.run, f"{cls.__name__} overrides run"
    assert "run" not in vars(cls)
    implements = {name for name in ("attack_batch", "attack_epsilons", "min_norm_batch", "min_norm_all")
                  if any(name in vars(k) for k in cls.__mro__ if k not in (Attack, MinimumNormAttack, object))}
    assert implements, f"{cls.__name__} implements no hook"
    if issubclass(cls, MinimumNormAttack):
        assert cls.run_min_norm is MinimumNormAttack.run_min_norm


@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.name)
def test_every_attack_declares_name_family_norm_and_kind(cls: type[Attack]) -> None:
    for attr in ("name", "family", "norm", "kind"):
        assert any(attr in vars(k) for k in cls.__mro__ if k is not Attack), f"{cls.__name__} lacks {attr}"
    assert cls.family in FAMILIES and cls.norm in NORMS and cls.kind in KINDS
    assert (cls.family == "minimum-norm") == issubclass(cls, MinimumNormAttack)
    assert cls.wrappable_by <= {"adaptive", "transfer"}
    if cls.wrappable_by:  # wrappers run eps-ball gradient attacks only
        assert (cls.family, cls.norm, cls.kind) == ("fixed-budget", "linf", "white-box")


def test_registries_are_derived_from_the_declarations() -> None:
    assert list(ATTACK_KINDS) == [cls.name for cls in ATTACK_CLASSES]
    assert len(set(ATTACK_KINDS)) == len(ATTACK_CLASSES)
    assert attack_labels() == set(ATTACK_KINDS)
    # the checks' sets keep the protocol's meaning, now read from the classes
    assert checks.BLACK_BOX_KINDS == LEGACY_BLACK_BOX == attack_labels("black-box", "transfer")
    assert checks.WHITE_BOX_KINDS == LEGACY_WHITE_BOX
    assert attack_labels("transfer") == {"transfer"} and attack_labels("adaptive") == {"bpda", "eot"}
    assert attack_labels(family="minimum-norm") == {"cw-l2", "cw-hc", "cw-wb", "jsma", "fab-min-norm"}
    with pytest.raises(ValueError, match="unknown"):
        attack_labels("grey-box")
    # the inner attacks of the wrappers
    assert set(adaptive.inner_kinds()) == set(wrappable_by("adaptive")) == {"pgd", "fgsm", "bim", "ilcm",
                                                                          "pgd-ls-sweep"}
    assert set(transfer.inner_kinds()) == set(wrappable_by("transfer")) == {"pgd", "fgsm", "bim"}
    assert isinstance(make_attack("bpda", {"inner_kind": "ilcm"}, 1).inner, ATTACK_KINDS["ilcm"])
    with pytest.raises(ValueError, match="unknown inner attack"):
        make_attack("transfer", {"surrogate": "s", "inner_kind": "ilcm"}, 1)


# ---------------------------------------------------------------- the template's loop and shaping

class _Probe(Attack):
    """Records each batch it is given; 'breaks' samples with an odd id."""

    name = "probe"
    family = "fixed-budget"
    norm = "linf"
    kind = "white-box"

    def __init__(self, *, seed: int = 0, detail: bool = False) -> None:
        super().__init__(seed=seed)
        self.calls: list[tuple[float, list[int], AttackContext]] = []
        self.reports_detail = detail  # type: ignore[misc]

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        self.calls.append((eps, ids.tolist(), context))
        odd = ids.to(x.device) % 2 == 1
        return BatchResult((x + eps * odd.view(-1, 1, 1, 1)).clamp(0, 1), odd,
                           ["odd" if o else None for o in odd.tolist()] if self.reports_detail else None)


def test_the_template_runs_the_eps_by_batch_loop_and_shapes_the_output() -> None:
    x, y = torch.rand(5, 1, 4, 4) * 0.5, torch.zeros(5, dtype=torch.long)
    attack = _Probe()
    out = attack.run(nn.Identity(), x, y, [0.1, torch.tensor(0.25)], batch_size=2)
    assert [(e, i) for e, i, _ in attack.calls] == [(0.1, [0, 1]), (0.1, [2, 3]), (0.1, [4]),
                                                    (0.25, [0, 1]), (0.25, [2, 3]), (0.25, [4])]
    assert all(type(e) is float for e, _, _ in attack.calls)  # every eps reaches the attack as a float
    assert all(c == AttackContext() for _, _, c in attack.calls)  # no context: an empty one
    assert out.x_adv.shape == (2, 5, 1, 4, 4) and out.success.tolist() == [[False, True, False, True, False]] * 2
    assert out.detail is None
    ctx = AttackContext(detector_threshold=0.5)
    ids = torch.tensor([7, 8, 9, 10, 11])
    detailed = _Probe(detail=True).run(nn.Identity(), x, y, [0.1], sample_ids=ids, context=ctx)
    assert detailed.detail == [["odd", None, "odd", None, "odd"]] and detailed.success[0].tolist()[0]
    empty = _Probe(detail=True).run(nn.Identity(), x[:0], y[:0], [0.1, 0.2])
    assert empty.x_adv.shape == (2, 0, 1, 4, 4) and empty.success.shape == (2, 0) and empty.detail == [[], []]
    none = _Probe().run(nn.Identity(), x, y, [])
    assert none.x_adv.shape == (0, 5, 1, 4, 4) and none.success.shape == (0, 5)


def test_the_engine_passes_an_explicit_context(tmp_path, linear_mnist: Linear) -> None:
    from bench.engine.evaluate import EvalTarget, evaluate
    from bench.store.database import Store
    from registry import get_entry
    from tests.conftest import small_protocol

    seen: list[AttackContext | None] = []
    provider = object()

    def factory(kind: str, params: dict, seed: int) -> Attack:
        attack = make_attack(kind, params, seed)
        inner = attack.run

        def run(model, x, y, epsilons, sample_ids=None, batch_size=None, context=None):
            seen.append(context)
            return inner(model, x, y, epsilons, sample_ids=sample_ids, batch_size=batch_size, context=context)

        attack.run = run  # type: ignore[method-assign]
        return attack

    evaluate(Store(tmp_path / "ctx.db"), EvalTarget(get_entry("standard"), linear_mnist, "w", "t", 0),
             small_protocol(n=20, chunk=20, eps=(0.0, 0.1), steps=2), attack_factory=factory,
             surrogates=provider)  # type: ignore[arg-type]
    assert seen and all(c is not None and c.surrogates is provider and c.detector_threshold is None for c in seen)


# ---------------------------------------------------------------- pyautoattack stays quiet

def test_quiet_library_counts_log_records_warnings_and_prints_of_this_thread(capfd) -> None:
    messages: Counter[str] = Counter()
    other: list[str] = []
    with quiet_library(messages):
        logging.getLogger("auto-attack").warning("there are 3 points with zero gradient!")
        logging.getLogger("auto-attack").warning("there are 3 points with zero gradient!")
        warnings.warn("a library warning", stacklevel=1)
        print("a library print")
        thread = threading.Thread(target=lambda: print("another thread's print"))
        thread.start()
        thread.join()
        other.append("done")
    out, err = capfd.readouterr()
    assert messages == Counter({"there are 3 points with zero gradient!": 2, "a library warning": 1,
                                "a library print": 1})
    assert "another thread's print" in out and "a library" not in out + err and "zero gradient" not in err
    assert not logging.getLogger("auto-attack").handlers and logging.getLogger("auto-attack").propagate


def test_autoattack_keeps_pyautoattacks_messages_off_the_terminal(capfd) -> None:
    g = torch.Generator().manual_seed(0)
    model = Quantised(Linear(torch.randn(10, 64, generator=g), torch.zeros(10))).eval()  # zero input gradients
    x = torch.randint(0, 9, (10, 1, 8, 8), generator=g).float() / 8
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = make_attack("autoattack", {"n_target_classes": 2, "square_queries": 10}, 3)
    out = attack.run(model, x, y, [0.1])
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert any("zero gradient" in m for m in attack.library_messages)  # kept, not printed
    assert out.detail is not None and len(out.detail[0]) == 10

"""Engine invariants on a linear MNIST model: cascade, nesting, determinism, resume, slices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attacks import make_attack
from bench.engine.evaluate import EvalTarget, evaluate
from bench.errors import AttackContractError, BenchError
from bench.report.summary import summarize
from bench.store.database import Result, Store
from registry import get_entry
from tests.conftest import EscapingAttack, Linear, fit_linear_mnist, small_protocol


def _target(model: Linear) -> EvalTarget:
    return EvalTarget(get_entry("standard"), model, "linear-test-weights", "test", 0)


def _rows(store: Store, run_id: int) -> list[tuple]:
    return [(r.attack, r.eps, r.sample, r.label, r.attacked, r.success, r.robust_after, r.pred,
             None if r.linf is None else round(r.linf, 6), r.detail) for r in store.results(run_id)]


def _eval(tmp_path: Path, name: str, model: Linear, db: str | None = None, **kw) -> tuple[Store, int]:
    store = Store(db or tmp_path / f"{name}.db")
    protocol = kw.pop("protocol", small_protocol())
    return store, evaluate(store, _target(model), protocol, **kw)


@pytest.fixture(scope="module")
def linear() -> Linear:
    """The conftest's linear MNIST model, fitted once for this module (no test changes it)."""
    return fit_linear_mnist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, linear: Linear) -> tuple[Store, int]:
    """One uninterrupted evaluation under the small protocol: read by several tests, and the rows that
    every other way of running the same evaluation (again, in other batches, resumed, in slices) must give."""
    return _eval(tmp_path_factory.mktemp("engine"), "reference", linear)


def test_eps_zero_equals_clean_and_worst_case_is_monotone(reference: tuple[Store, int]) -> None:
    store, run_id = reference
    s = summarize(store, store.runs()[0])
    assert s.complete and s.n_evaluated == 60
    assert s.worst[0.0] == pytest.approx(s.clean_acc)
    worst = [s.worst[e] for e in s.epsilons]
    assert worst == sorted(worst, reverse=True)
    assert worst[-1] < worst[0]  # the attacks do something
    # per sample: a sample robust at a larger eps is robust at every smaller eps
    rows = store.results(run_id)
    final = {}
    for eps in s.epsilons:
        last = [r for r in rows if r.eps == eps and r.attack == "pgd-cw"]
        final[eps] = {r.sample for r in last if r.robust_after}
    for small, big in zip(s.epsilons, s.epsilons[1:], strict=False):
        assert final[big] <= final[small]


def test_one_row_per_run_attack_eps_sample(reference: tuple[Store, int]) -> None:
    store, run_id = reference
    rows = _rows(store, run_id)
    keys = [(r[0], r[1], r[2]) for r in rows]
    assert len(keys) == len(set(keys)) == 60 * (1 + 4 * 3)


def test_same_seed_same_rows_and_batch_size_does_not_matter(tmp_path: Path, linear: Linear, new_db,
                                                             reference: tuple[Store, int]) -> None:
    """On SQLite and on PostgreSQL: the reference's rows (stored in SQLite), whatever the store."""
    s1, r1 = reference
    s2, r2 = _eval(tmp_path, "b", linear, db=new_db("b"))
    s3, r3 = _eval(tmp_path, "c", linear, db=new_db("c"), batch_size=7)
    assert _rows(s1, r1) == _rows(s2, r2) == _rows(s3, r3)


def test_broken_samples_are_never_attacked_again(tmp_path: Path, linear: Linear) -> None:
    calls: list[tuple[str, float, set[int]]] = []

    def spy(kind: str, params: dict, seed: int):
        attack = make_attack(kind, params, seed)
        inner = attack.run

        def run(model, x, y, epsilons, sample_ids=None, batch_size=None, context=None):
            calls.append((f"{kind}-{params.get('loss', '')}", float(epsilons[0]), set(sample_ids.tolist())))
            return inner(model, x, y, epsilons, sample_ids=sample_ids, batch_size=batch_size, context=context)

        attack.run = run  # type: ignore[method-assign]
        return attack

    store, run_id = _eval(tmp_path, "a", linear, attack_factory=spy)
    rows = store.results(run_id)
    wrong = {r.sample for r in rows if r.attack == "clean" and not r.robust_after}
    broken_before: set[int] = set(wrong)
    order = ["fgsm", "pgd-ce", "pgd-cw"]
    by_stage = {(r.attack, r.eps, r.sample): r for r in rows}
    attacked_total = 0
    for eps in (0.0, 0.05, 0.1, 0.2):
        for label in order:
            seen = [c for c in calls if c[1] == eps and c[0].startswith(label.split("-")[0])
                    and (label == "fgsm" or c[0].endswith(label.split("-")[1]))]
            ids = set().union(*[c[2] for c in seen]) if seen else set()
            assert not ids & broken_before, f"{label}@{eps} attacked already-broken samples"
            attacked_total += len(ids)
            broken_before |= {s for (a, e, s), r in by_stage.items() if a == label and e == eps and r.success}
    assert attacked_total == sum(r.attacked for r in rows if r.attack != "clean")
    assert len(broken_before) > len(wrong)


def test_resume_after_a_simulated_kill_gives_the_same_rows(linear: Linear, new_db,
                                                           reference: tuple[Store, int]) -> None:
    ref_store, ref_id = reference
    store = Store(new_db("killed"))
    n_calls = {"n": 0}

    class Killed(Exception):
        pass

    def dies_on_seventh_call(kind: str, params: dict, seed: int):
        n_calls["n"] += 1
        if n_calls["n"] == 7:
            raise Killed
        return make_attack(kind, params, seed)

    with pytest.raises(Killed):
        evaluate(store, _target(linear), small_protocol(), attack_factory=dies_on_seventh_call)
    partial = len(store.results(store.runs()[0].id))
    assert 0 < partial < len(ref_store.results(ref_id))
    run_id = evaluate(store, _target(linear), small_protocol())
    assert _rows(store, run_id) == _rows(ref_store, ref_id)
    evaluate(store, _target(linear), small_protocol())  # running again adds nothing
    assert _rows(store, run_id) == _rows(ref_store, ref_id)
    assert len(store.runs()) == 1


def test_slices_merge_into_one_run(linear: Linear, new_db, reference: tuple[Store, int]) -> None:
    ref_store, ref_id = reference
    store = Store(new_db("slices"))
    evaluate(store, _target(linear), small_protocol(), start=20, stop=60)
    run_id = evaluate(store, _target(linear), small_protocol(), start=0, stop=20)
    assert len(store.runs()) == 1
    assert _rows(store, run_id) == _rows(ref_store, ref_id)
    with pytest.raises(BenchError, match="align"):
        evaluate(store, _target(linear), small_protocol(), start=5, stop=20)


def test_engine_rejects_inputs_outside_the_ball(tmp_path: Path, linear: Linear) -> None:
    store = Store(tmp_path / "bad.db")
    with pytest.raises(AttackContractError, match="distance"):
        evaluate(store, _target(linear), small_protocol(eps=(0.05, 0.1), primary=0.1),
                 attack_factory=lambda k, p, s: EscapingAttack())
    # the clean stage is stored, the faulty stage is not
    attacks = {r.attack for r in store.results(store.runs()[0].id)}
    assert attacks == {"clean"}


def test_engine_verifies_success_itself(tmp_path: Path, linear: Linear) -> None:
    """An attack that claims success for unchanged inputs breaks nothing."""
    from attacks.base import AttackOutput

    class Liar:
        def run(self, model, x, y, epsilons, sample_ids=None, batch_size=None, context=None):
            return AttackOutput(x_adv=torch.stack([x for _ in epsilons]),
                                success=torch.ones(len(epsilons), x.shape[0], dtype=torch.bool))

    store = Store(tmp_path / "liar.db")
    run_id = evaluate(store, _target(linear), small_protocol(), attack_factory=lambda k, p, s: Liar())
    assert not any(r.success for r in store.results(run_id) if r.attack != "clean")


def test_rows_carry_the_fingerprint(reference: tuple[Store, int]) -> None:
    store, run_id = reference
    with store.session() as s:
        fps = {fp for (fp,) in s.query(Result.fingerprint).filter(Result.run_id == run_id).distinct()}
    assert fps == {small_protocol().fingerprint}

"""The evaluation engine: ``evaluate(entry, protocol)`` -> per-sample rows in the database.

Order: for each chunk of samples (the protocol's unit of work, seeding and commit), the clean
pass, then for each epsilon ascending each attack of the protocol in order, run only on the
samples that are still robust (correct and unbroken by every earlier stage, including every
stage at smaller epsilons: the balls are nested). The engine, not the attack, decides success:
it checks the returned input lies in the epsilon ball and the [0, 1] box (raising otherwise,
since that is a bug) and re-runs the model on it. Each (stage, chunk) is written in one
transaction with all its rows, so a killed evaluation resumes at the first missing stage and ends
with exactly the rows of an uninterrupted run.

Detector rule: when the evaluated model has a ``detector_score`` (higher = more suspicious), its
threshold is set once per run on held-out clean inputs (the last ``CALIBRATION_SAMPLES`` images of
the split, never evaluated) at the protocol's false-positive rate, and stored with the run. A
rejected clean input counts as an error; an attack succeeds only if its input is misclassified
and not rejected. Every row stores the detector score and verdict, so detection ROC-AUC per
attack can be computed from the rows.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attacks import make_attack
from attacks.base import Attack, PassCounter, derive_seed, prepare_model, seed_generators
from attacks.context import AttackContext, SurrogateProvider
from bench import code_version
from bench.engine.extras import run_extra
from bench.engine.verify import (
    DetectorRule,
    DrawsRule,
    check_bounds,
    has_detector,
    judged_verdict,
    predict,
)
from bench.errors import BenchError
from bench.protocol.data import load_split
from bench.protocol.protocols import CALIBRATION_SAMPLES, AttackSpec, Protocol
from bench.store.database import Result, Stage, Store, packages_json
from registry.entry import Entry

ProgressFn = Callable[[str, float, int, int], None]
AttackFactory = Callable[[str, dict, int], Attack]


@dataclass(frozen=True)
class EvalTarget:
    """What is evaluated: the entry, its model and where the weights came from."""

    entry: Entry
    model: nn.Module
    weights_sha256: str
    budget: str
    train_seed: int | None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def calibrate_detector(store: Store, run_id: int, stored_json: str | None, protocol: Protocol, model: nn.Module,
                       x_all: torch.Tensor, dev: torch.device, bs: int) -> DetectorRule:
    """The run's threshold: the stored one (resumed runs and slices share it), else calibrated and stored."""
    from defenses.detectors import threshold_at_fpr

    if stored_json is not None:
        return DetectorRule(model, float(json.loads(stored_json)["threshold"]))
    n_total = x_all.shape[0]
    first = n_total - CALIBRATION_SAMPLES
    if protocol.n_samples > first:
        raise BenchError(f"{protocol.name} evaluates {protocol.n_samples} samples, overlapping the detector "
                         f"calibration set ({protocol.split}[{first}:{n_total}])")
    rule = DetectorRule(model, 0.0)
    scores = rule.scores(x_all[first:].to(dev), bs)
    threshold = threshold_at_fpr(scores, protocol.detector_fpr)
    record = {"threshold": threshold, "fpr": protocol.detector_fpr,
              "calibration": f"{protocol.split}[{first}:{n_total}]", "n_calibration": int(scores.numel()),
              "calibration_rejection_rate": float((scores > threshold).float().mean()),
              "metric": str(getattr(model, "metric", "custom")), "score": "higher = more suspicious"}
    stored = json.loads(store.set_detector_calibration(run_id, json.dumps(record, sort_keys=True)))
    return DetectorRule(model, float(stored["threshold"]))


def check_slice(protocol: Protocol, start: int, stop: int | None) -> tuple[int, int]:
    """Validate a sample slice: it must lie in the protocol and align with its chunks."""
    n = protocol.n_samples
    stop = n if stop is None else stop
    c = protocol.chunk_size
    if not 0 <= start < stop <= n:
        raise BenchError(f"slice {start}:{stop} is outside {protocol.name}'s samples 0:{n}")
    if start % c or (stop % c and stop != n):
        raise BenchError(f"slice {start}:{stop} must align with {protocol.name}'s chunks of {c} samples")
    return start, stop


def evaluate(
    store: Store, target: EvalTarget, protocol: Protocol, *, data_dir: str | None = None, start: int = 0,
    stop: int | None = None, device: str = "cpu", batch_size: int | None = None,
    progress: ProgressFn | None = None, attack_factory: AttackFactory = make_attack,
    surrogates: SurrogateProvider | None = None,
) -> int:
    """Evaluate ``target`` under ``protocol`` on samples [start, stop); returns the run id.

    The entry is attacked with the protocol's attacks plus the adaptive attacks it declares (see
    :meth:`Protocol.for_entry`; a randomized entry gets EOT, and every verdict on it, clean pass
    included, is taken over draws by the protocol's ``RANDOMIZED_RULE``). ``surrogates`` provides the
    transfer attacks' surrogate models (see :class:`bench.models.surrogates.WorkspaceSurrogates`); every
    attack gets it, and a detector entry's threshold, in its :class:`~attacks.context.AttackContext`.
    """
    entry = target.entry
    if protocol.dataset not in entry.architectures:
        raise BenchError(f"entry {entry.id!r} declares no model for {protocol.dataset} "
                         f"(protocol {protocol.name})")
    start, stop = check_slice(protocol, start, stop)
    x_all, y_all = load_split(protocol.dataset, protocol.split, data_dir)
    dev = torch.device(device)
    bs = batch_size or protocol.chunk_size
    declared = tuple(entry.adaptive_attacks) + (("eot",) if entry.randomized else ())
    applied = protocol.for_entry(declared)
    run = store.get_or_create_run(
        entry_id=entry.id, entry_name=entry.name, entry_version=entry.version, protocol=protocol.name,
        fingerprint=protocol.fingerprint, protocol_json=protocol.run_json(applied, randomized=entry.randomized),
        checkpoint_sha256=target.weights_sha256, budget=target.budget, train_seed=target.train_seed,
        code_version=code_version(), packages=packages_json(), device=device_name(dev),
        n_samples=protocol.n_samples,
    )
    done = store.done_stages(run.id)
    detector = (calibrate_detector(store, run.id, run.detector_json, protocol, target.model.to(dev).eval(), x_all,
                                   dev, bs)
                if has_detector(target.model) else None)
    model = PassCounter(prepare_model(target.model, dev))
    # a randomized run is judged over draws by the rule its stored protocol JSON names (a run stored before
    # the rule existed keeps its single-draw verdicts: resumed chunks must follow the same rule as the others)
    stored_rule = json.loads(run.protocol_json).get("randomized_rule")
    draws = DrawsRule(**stored_rule) if stored_rule else None
    context = AttackContext(surrogates=surrogates, detector_threshold=None if detector is None else detector.threshold)

    stages = [("clean", 0.0)] + applied.stages()
    total = (len(stages) + len(applied.extras)) * len(range(start, stop, protocol.chunk_size))
    finished = 0
    for c0 in range(start, stop, protocol.chunk_size):
        c1 = min(c0 + protocol.chunk_size, stop)
        ids = torch.arange(c0, c1)
        x, y = x_all[c0:c1].to(dev), y_all[c0:c1].to(dev)
        robust = torch.zeros(c1 - c0, dtype=torch.bool)
        state: dict[float, torch.Tensor] = {}  # robust flags after the clean pass (key -1) and after each eps
        for label, eps in stages:
            if (label, eps, c0) in done:
                rows = store.rows_for(run.id, label, eps, ids.tolist())
                if len(rows) != c1 - c0:
                    raise BenchError(f"run {run.id}: stage {label}@{eps} chunk {c0} is incomplete in the database")
                robust = torch.tensor([r.robust_after for r in rows])
            else:
                spec = None if label == "clean" else applied.spec(label)
                robust = run_stage(store, run.id, protocol.fingerprint, model, label, eps, spec, x, y, ids, robust, bs,
                                   attack_factory, detector, context, draws=draws)
            state[-1.0 if label == "clean" else eps] = robust.clone()
            finished += 1
            if progress is not None:
                progress(label, eps, finished, total)
        for extra in applied.extras:
            if (extra.label, extra.row_eps, c0) not in done:
                base = state[-1.0] if extra.on == "clean-correct" else state.get(float(extra.eps or 0.0))
                if base is None:
                    raise BenchError(f"{protocol.name}: extra {extra.label} needs survivors at eps {extra.eps}, "
                                     "which is not on the grid")
                run_extra(store, run.id, protocol, model, extra, x, y, ids, base, bs, attack_factory, detector,
                          context)
            finished += 1
            if progress is not None:
                progress(extra.label, extra.row_eps, finished, total)
    return run.id


def run_stage(store: Store, run_id: int, fingerprint: str, model: PassCounter, label: str, eps: float,
              spec: AttackSpec | None, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, robust: torch.Tensor,
              bs: int, attack_factory: AttackFactory, detector: DetectorRule | None = None,
              context: AttackContext | None = None, *, draws: DrawsRule | None = None,
              attack_model: nn.Module | None = None) -> torch.Tensor:
    """Run one (stage, chunk) on the still-robust samples and store its rows and stage record atomically.

    ``spec`` None is a clean pass (the cascade's "clean", or an escalation's clean pass over draws).
    The engine decides success itself: ``x_adv`` must lie in the ball and the box, and ``model``
    (never ``attack_model``) is re-run on it. ``draws`` judges a randomized model over draws (clean
    pass included); ``attack_model`` is what the attack sees when it differs from the judged model
    (an escalation's adapter, such as the log of the outputs).
    Returns the robust flags after the stage.

    The stage runs inside ``torch.random.fork_rng`` seeded from (its seed, label, eps, first sample):
    a model that draws from torch's global generator (a randomized defense) gets the same draws on
    every run, whatever the caller's random state, which is left untouched. Attacks seed their own
    generators, so deterministic models get exactly the rows they got without it.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed_generators(derive_seed(0 if spec is None else spec.seed, "stage", label, eps, int(ids[0])), devices)
        return _stage(store, run_id, fingerprint, model, label, eps, spec, x, y, ids, robust, bs, attack_factory,
                      detector, context, draws, attack_model)


def _stage(store: Store, run_id: int, fingerprint: str, model: PassCounter, label: str, eps: float,
           spec: AttackSpec | None, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, robust: torch.Tensor,
           bs: int, attack_factory: AttackFactory, detector: DetectorRule | None, context: AttackContext | None,
           draws: DrawsRule | None, attack_model: nn.Module | None) -> torch.Tensor:
    t0 = time.perf_counter()
    model.reset()
    n = x.shape[0]
    fp = fingerprint
    if spec is None:  # a clean pass: every sample, unperturbed
        if draws is None:
            pred = predict(model, x, bs).cpu()
            correct = pred == y.cpu()
        else:
            pred, correct = draws.verdict(model, x, y, bs, label, eps, int(ids[0]))
        score: list[float | None] = [None] * n
        rejected: list[bool | None] = [None] * n
        if detector is not None:
            sc, rej = detector.judge(x, bs)
            correct &= ~rej  # a rejected clean input is an error
            score, rejected = [float(v) for v in sc], [bool(v) for v in rej]
        rows = [Result(run_id=run_id, fingerprint=fp, attack=label, eps=eps, sample=int(s), label=int(t),
                       attacked=True, success=not bool(c), robust_after=bool(c), pred=int(p), linf=0.0,
                       score=sc_, rejected=rj)
                for s, t, p, c, sc_, rj in zip(ids.tolist(), y.tolist(), pred.tolist(), correct.tolist(), score,
                                               rejected, strict=True)]
        n_fwd, n_bwd = model.reset()
        stage = Stage(run_id=run_id, fingerprint=fp, attack=label, eps=eps, chunk_start=int(ids[0]),
                      chunk_stop=int(ids[-1]) + 1, n_attacked=n, n_broken=int((~correct).sum()), n_forward=n_fwd,
                      n_backward=n_bwd, seconds=time.perf_counter() - t0, seed=0)
        if not store.write_stage(stage, rows, stage.seconds):  # stored meanwhile by a concurrent slice
            return torch.tensor([r.robust_after for r in store.rows_for(run_id, label, eps, ids.tolist())])
        return correct
    alive = robust.clone()
    idx = alive.nonzero().squeeze(1)
    success = torch.zeros(n, dtype=torch.bool)
    pred_all: list[int | None] = [None] * n
    linf_all: list[float | None] = [None] * n
    detail_all: list[str | None] = [None] * n
    score_all: list[float | None] = [None] * n
    rejected_all: list[bool | None] = [None] * n
    n_fwd = n_bwd = 0
    if idx.numel():
        attack = attack_factory(spec.kind, dict(spec.params), spec.seed)
        xs, ys = x[idx.to(x.device)], y[idx.to(x.device)]
        out = attack.run(model if attack_model is None else attack_model, xs, ys, [eps], sample_ids=ids[idx],
                         batch_size=bs, context=context)
        n_fwd, n_bwd = model.reset()
        x_adv = out.x_adv[0].detach().to(x.device)
        check_bounds(x_adv, xs, eps, label)
        linf = (x_adv - xs).abs().flatten(1).amax(1).cpu()
        pred, broke, adv_sc, adv_rej = judged_verdict(model, x_adv, ys, bs, detector, draws, label, eps,
                                                      int(ids[0]))  # rejected: no success
        if adv_sc is not None and adv_rej is not None:
            for j, i in enumerate(idx.tolist()):
                score_all[i], rejected_all[i] = float(adv_sc[j]), bool(adv_rej[j])
        model.reset()
        success[idx] = broke
        for j, i in enumerate(idx.tolist()):
            pred_all[i], linf_all[i] = int(pred[j]), float(linf[j])
            if out.detail is not None and bool(broke[j]):
                detail_all[i] = out.detail[0][j]
    robust_after = alive & ~success
    rows = [Result(run_id=run_id, fingerprint=fp, attack=label, eps=eps, sample=int(ids[i]), label=int(y[i]),
                   attacked=bool(alive[i]), success=bool(success[i]), robust_after=bool(robust_after[i]),
                   pred=pred_all[i], linf=linf_all[i], detail=detail_all[i], score=score_all[i],
                   rejected=rejected_all[i]) for i in range(n)]
    stage = Stage(run_id=run_id, fingerprint=fp, attack=label, eps=eps, chunk_start=int(ids[0]),
                  chunk_stop=int(ids[-1]) + 1, n_attacked=int(alive.sum()), n_broken=int(success.sum()),
                  n_forward=n_fwd, n_backward=n_bwd, seconds=time.perf_counter() - t0, seed=spec.seed)
    if not store.write_stage(stage, rows, stage.seconds):  # stored meanwhile by a concurrent slice
        return torch.tensor([r.robust_after for r in store.rows_for(run_id, label, eps, ids.tolist())])
    return robust_after

"""Escalation: act on a failed diagnosis until the worst case is the best attack the benchmark knows.

After a run's sanity checks, every failed check of severity "unreliable" calls for remedies
(:mod:`bench.escalation.policy`). :func:`escalate` plans their stages at every eps of the grid,
stores the plan with the run (``runs.escalation_json``), runs them chunk by chunk on the survivors
through the engine's own :func:`~bench.engine.evaluate.run_stage` (ordinary per-sample rows, each
input verified and re-judged on the model), and then runs the checks again on the escalated
survivors. Checks that still fail and call for remedies not yet run start another round, up to the
policy's ``max_rounds``.

Nesting: a stage at eps runs on the samples still robust at eps (after the cascade and every earlier
escalation stage there) *and* at the next smaller eps of the escalation, so the flags of the last
stage at each eps are the worst case there, and robustness still cannot rise with eps. A
randomized model (declared, or found by the checks) is judged over draws by the protocol's
``RANDOMIZED_RULE``: its escalation starts with a clean pass over draws (``esc-clean-draws``, at eps
0), whose count is the clean accuracy the board shows.

What stays: the stored checks are the diagnosis (the entry stays "evaluation possibly unreliable":
the protocol's own attacks were fooled); the checks after each round are kept in the record. An
honest run (no unreliable flag) runs nothing and stores nothing here. A killed escalation resumes:
the plan is stored before its stages, and stored stages are read back, not rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks import make_attack
from attacks.adapters import adapt
from attacks.adaptive import bpda_modules
from attacks.base import PassCounter, prepare_model
from attacks.context import AttackContext, SurrogateProvider
from bench.checks.suite import CheckResult, load_results, run_checks
from bench.engine.evaluate import run_stage
from bench.engine.verify import DetectorRule, DrawsRule, has_detector
from bench.errors import BenchError
from bench.escalation.distill import DISTILLED, DistilledSurrogates, cache_name, distill
from bench.escalation.inner import decision_module
from bench.escalation.policy import (
    ALL_REMEDIES,
    CLEAN_DRAWS,
    CONDITIONS,
    POLICY,
    already_in_cascade,
    policy_for,
    remedy_stages,
    triggered,
)
from bench.escalation.shattered import declared_identity, shattered_modules
from bench.protocol.data import load_split
from bench.protocol.protocols import RANDOMIZED_RULE, AttackSpec
from bench.store.database import Result, Store
from bench.store.summary import load_escalation

StageProgress = Callable[[str, float, int, int], None]
PROBE_IMAGES = 20  # the images on which shattered modules are looked for


def unreliable_failures(checks: list[CheckResult]) -> list[str]:
    """Names of the failed checks of severity "unreliable", in check order."""
    return [c.name for c in checks if c.failed and c.severity == "unreliable"]


def is_settled(record: dict | None) -> bool:
    """Whether a stored escalation finished: its last round was checked again and asks for nothing new."""
    if not record or not record.get("rounds"):
        return False
    last = record["rounds"][-1]
    return "after" in last and bool(last.get("final"))


def escalate(store: Store, run_id: int, model: nn.Module, *, surrogates: SurrogateProvider | None = None,
             cache_dir: Path | None = None, data_dir: str | None = None, device: str = "cpu",
             batch_size: int | None = None, progress: StageProgress | None = None,
             check_progress: Callable[[str], None] | None = None) -> dict | None:
    """Escalate a checked run whose diagnosis has an unreliable flag; returns its record (None: nothing to do).

    ``surrogates`` serves the benchmark's transfer surrogates; the distilled one is trained here on
    first use and cached in ``cache_dir``.
    """
    run = store.run(run_id)
    proto = json.loads(run.protocol_json)
    diagnosis = load_results(store, run_id)
    failed = unreliable_failures(diagnosis)
    if not failed:
        return None
    policy, policy_id = policy_for(proto)
    record: dict[str, Any] | None = load_escalation(run)
    if record is not None and record.get("policy") != policy_id:
        return record  # escalated under another policy: kept as stored (its rows follow that policy)
    if is_settled(record):
        return record
    if record is None:
        record = {"policy": policy_id, "diagnosis": failed, "rounds": [], "stages": [], "seconds": 0.0,
                  "distill_seconds": 0.0}
    t0 = time.perf_counter()
    dev = torch.device(device)
    judged = prepare_model(model, dev)
    pc = PassCounter(judged)
    declared_random = "randomized_rule" in proto
    x_all, y_all = load_split(proto["dataset"], proto["split"], data_dir)
    n = run.n_samples
    x, y = x_all[:n].to(dev), y_all[:n].to(dev)
    shattered = shattered_modules(judged, x[:PROBE_IMAGES])
    record["bpda_identity_modules"] = [name for name, _ in shattered]
    can_bpda = bool(bpda_modules(judged) or shattered)
    inner = decision_module(judged, x[:PROBE_IMAGES])
    record["inner_logits_module"] = None if inner is None else inner[0]
    detector = None
    if has_detector(judged):
        if run.detector_json is None:
            raise BenchError(f"run {run_id} has no detector calibration stored")
        detector = DetectorRule(judged, float(json.loads(run.detector_json)["threshold"]))
    provider = _provider(surrogates, cache_dir, judged, run.checkpoint_sha256, proto["dataset"], data_dir, device,
                         policy["distill"])  # the size's distillation settings (policy_for merges them)
    context = AttackContext(surrogates=provider, detector_threshold=None if detector is None else detector.threshold)
    bs = batch_size or int(proto.get("chunk_size", 100))
    pending, seen = failed, set(failed)
    for number in range(int(POLICY["max_rounds"])):
        if number < len(record["rounds"]):
            rnd = record["rounds"][number]
        else:
            # what applies is decided per round, from every check failed so far (a randomized forward found
            # only by a later round's checks still gets EOT, and its verdicts over draws from then on)
            randomized = declared_random or "randomized-forward" in seen
            applies = {"detector-aware": detector is not None, "log-outputs": "probability-outputs" in seen,
                       "bpda": can_bpda, "inner-logits": inner is not None, "eot": randomized}
            rnd = _plan_round(record, number, pending, proto, applies, randomized,
                              rejudge=randomized and not declared_random and bool(POLICY["rejudge_found_randomized"]))
            if rnd is None:
                break
            store.set_escalation(run_id, json.dumps(record, sort_keys=True))
        if "after" not in rnd:
            draws = DrawsRule(**RANDOMIZED_RULE) if rnd.get("draws") else None
            with declared_identity([m for _, m in shattered]):  # read by the BPDA stages only
                latest = _run_round(store, run, proto, record, number, pc, x, y, bs, detector, context, draws,
                                    progress, None if inner is None else inner[1])
            after = run_checks(store, run_id, model, data_dir=data_dir, device=device, batch_size=batch_size,
                               progress=check_progress, after_escalation=True)
            alive = set(latest[float(proto["primary_eps"])].nonzero()[:, 0].tolist())
            rnd["after"] = {c.name: c.status for c in after}
            # only what the escalation left standing: a v2 probe's stored rows were run on the cascade's survivors
            rnd["exposed_at_primary"] = sorted(set().union(*(c.exposed for c in after)) & alive)
            rnd["after_failed"] = unreliable_failures(after)
            record["seconds"] = float(record.get("seconds", 0.0)) + time.perf_counter() - t0
            record["distill_seconds"] = float(record.get("distill_seconds", 0.0)) + provider.seconds
            provider.seconds, t0 = 0.0, time.perf_counter()
            store.set_escalation(run_id, json.dumps(record, sort_keys=True))
        pending = rnd["after_failed"]
        seen |= set(pending)
    if record["rounds"]:
        record["rounds"][-1]["final"] = True
    store.set_escalation(run_id, json.dumps(record, sort_keys=True))
    return record


def _plan_round(record: dict, number: int, failed: list[str], proto: dict, applies: dict[str, bool],
                randomized: bool, rejudge: bool = False) -> dict | None:
    """Plan round ``number`` for the failed checks: its remedies and stages (None: nothing new to run;
    what was skipped is then noted on the last round, which stays the one whose checks count).

    ``rejudge``: the model was found randomized (not declared so), so the cascade and any earlier
    round judged it on single draws. The round then starts over, over draws: a clean pass on every
    sample, then every stage that ran before (the cascade's, then the earlier rounds'), with its own
    attack and seed, labelled ``esc-draws-<label>``, chained per eps as the cascade is."""
    done = {r for rnd in record["rounds"] for r in [*rnd["remedies"], *rnd["skipped"], *rnd.get("skipped_later", {})]}
    triggers = triggered(failed)
    wanted = [r for r in ALL_REMEDIES if any(r in v for v in triggers.values()) and r not in done]
    skipped = {r: f"not applicable: needs {CONDITIONS[r]}" for r in wanted if not applies.get(r, True)}
    remedies = [r for r in wanted if r not in skipped]
    ran = {_signature(st) for st in record["stages"]}
    stages, duplicates = [], []
    for s in remedy_stages(proto):
        if s.remedy not in remedies:
            continue
        sig = _signature(s.canonical())
        if already_in_cascade(s, proto) or sig in ran:  # the same attack already runs at every eps
            duplicates.append(s.spec.label)
            continue
        ran.add(sig)
        stages.append(s)
    planned: list[dict[str, Any]] = []
    first_draws = randomized and not any(st["label"] == CLEAN_DRAWS for st in record["stages"])
    redo = _rejudged(record, proto, number) if rejudge and first_draws else {}
    if first_draws:
        planned.append({"label": CLEAN_DRAWS, "eps": 0.0, "remedy": "eot", "kind": "clean", "params": {},
                        "seed": 0, "adapter": None, "round": number, "all_samples": bool(redo)})
    for eps in proto["epsilons"]:
        planned.extend(redo.get(float(eps), []))
        for s in stages:
            planned.append({**s.canonical(), "eps": float(eps), "round": number})
    if not planned:
        if record["rounds"]:
            record["rounds"][-1].setdefault("skipped_later", {}).update(
                {**skipped, **{r: "its attacks already ran" for r in remedies}})
        return None
    rnd = {"round": number, "triggers": triggers, "remedies": remedies, "skipped": skipped,
           "already_ran": duplicates, "draws": randomized}
    record["rounds"].append(rnd)
    record["stages"].extend(planned)
    return rnd


REJUDGED = "esc-draws-"  # the label prefix of a stage that ran before, run again judged over draws


def _rejudged(record: dict, proto: dict, number: int) -> dict[float, list[dict[str, Any]]]:
    """Per eps, every stage that ran there so far (the cascade's, then earlier rounds'), again, over draws.

    The first at each eps restarts the chain from the samples still robust at the previous eps (or
    clean-correct over draws): the single-draw verdicts that came before are replaced, not refined."""
    primary = float(proto["primary_eps"])
    out: dict[float, list[dict[str, Any]]] = {}
    for eps in (float(e) for e in proto["epsilons"]):
        before = [{"label": a["label"], "kind": a["kind"], "params": a["params"], "seed": a["seed"],
                   "adapter": None, "remedy": "eot"}
                  for a in proto["attacks"] if a.get("at", "all") == "all" or eps == primary]
        before += [st for st in record["stages"] if float(st["eps"]) == eps and st.get("kind") != "clean"]
        out[eps] = [{**st, "label": REJUDGED + st["label"], "eps": eps, "round": number, "rejudge": True,
                     "restart": i == 0} for i, st in enumerate(before)]
    return out


def _signature(stage: dict) -> str:
    """What makes two stages the same attack (their labels and seeds aside)."""
    return json.dumps({"kind": stage["kind"], "params": stage["params"], "adapter": stage.get("adapter")},
                      sort_keys=True)


def _provider(base: SurrogateProvider | None, cache_dir: Path | None, model: nn.Module, weights_sha: str,
              dataset: str, data_dir: str | None, device: str, settings: dict) -> DistilledSurrogates:
    """The transfer stages' surrogates: the benchmark's, and one distilled from ``model`` on first use."""
    from registry import get_entry

    def make_arch() -> nn.Module:
        from defenses.architectures import build_architecture

        arch = get_entry("standard").architectures[dataset]
        return (build_architecture(arch) if isinstance(arch, str) else arch()).to(device)

    def build() -> nn.Module:
        x_train = load_split(dataset, "train", data_dir)[0][: int(settings["train_images"])]
        return distill(model, make_arch, x_train, settings, device)

    cache_file = cache_dir / cache_name(weights_sha, settings, dataset) if cache_dir is not None else None
    return DistilledSurrogates(base, build, cache_file, cache_dir=getattr(base, "cache_dir", cache_dir),
                               make_arch=make_arch)


def _latest(proto: dict, rows: list[Result], record: dict, before_round: int, n: int) -> dict[float, torch.Tensor]:
    """Per eps (0: clean), every sample's robust flag after the cascade and the escalation's earlier rounds."""
    flags: dict[tuple[str, float], dict[int, bool]] = {}
    for r in rows:
        flags.setdefault((r.attack, float(r.eps)), {})[r.sample] = bool(r.robust_after)

    def vector(key: tuple[str, float]) -> torch.Tensor | None:
        got = flags.get(key)
        if got is None or len(got) != n:
            return None
        return torch.tensor([got[i] for i in range(n)])

    clean = vector(("clean", 0.0))
    if clean is None:
        raise BenchError("the run's clean pass is incomplete: finish the run before escalating it")
    latest = {0.0: clean}
    for eps in proto["epsilons"]:
        for a in proto["attacks"]:
            v = vector((a["label"], float(eps)))
            if v is not None:
                latest[float(eps)] = v
    for st in record["stages"]:
        if st["round"] >= before_round:
            continue
        v = vector((st["label"], float(st["eps"])))
        if v is not None:
            e = float(st["eps"])
            refines = st["label"] == CLEAN_DRAWS and not st.get("all_samples")  # the clean pass over draws
            latest[e] = latest[e] & v if refines else v  # refines the cascade's, or replaces it
    return latest


def _run_round(store: Store, run: Any, proto: dict, record: dict, number: int, pc: PassCounter, x: torch.Tensor,
               y: torch.Tensor, bs: int, detector: DetectorRule | None, context: AttackContext,
               draws: DrawsRule | None, progress: StageProgress | None,
               inner: nn.Module | None = None) -> dict[float, torch.Tensor]:
    """Run (or resume) round ``number``'s stages, chunk by chunk, in the engine's way; returns every
    sample's robust flags per eps after the round. ``inner`` is the decision submodule the "inner"
    adapter's stages attack."""
    n = run.n_samples
    latest = _latest(proto, store.results(run.id), record, number, n)
    grid = [0.0] + [float(e) for e in proto["epsilons"]]
    previous = {e: grid[max(i - 1, 0)] for i, e in enumerate(grid)}
    stages = [st for st in record["stages"] if st["round"] == number]
    done = store.done_stages(run.id)
    chunk = int(proto.get("chunk_size", 100))
    total, finished = len(stages) * len(range(0, n, chunk)), 0
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        ids = torch.arange(c0, c1)
        xc, yc = x[c0:c1], y[c0:c1]
        for st in stages:
            eps = float(st["eps"])
            if (st["label"], eps, c0) in done:
                rows = store.rows_for(run.id, st["label"], eps, ids.tolist())
                robust = torch.tensor([r.robust_after for r in rows])
            elif st["label"] == CLEAN_DRAWS:
                everyone = torch.ones(c1 - c0, dtype=torch.bool)
                robust = run_stage(store, run.id, run.fingerprint, pc, CLEAN_DRAWS, 0.0, None, xc, yc, ids,
                                   everyone if st.get("all_samples") else latest[0.0][c0:c1], bs, make_attack,
                                   detector, context, draws=draws)
            else:
                alive = (latest[previous[eps]][c0:c1] if st.get("restart")
                         else latest[eps][c0:c1] & latest[previous[eps]][c0:c1])
                spec = AttackSpec(st["label"], st["kind"], st["params"], seed=int(st["seed"]))
                robust = run_stage(store, run.id, run.fingerprint, pc, st["label"], eps, spec, xc, yc, ids, alive,
                                   bs, make_attack, detector, context, draws=draws,
                                   attack_model=adapt(pc, st["adapter"], inner))
            if st["label"] == CLEAN_DRAWS:
                latest[0.0][c0:c1] = robust if st.get("all_samples") else latest[0.0][c0:c1] & robust
            else:
                latest[eps][c0:c1] = robust
            finished += 1
            if progress is not None:
                progress(st["label"], eps, finished, total)
    return latest


__all__ = ["DISTILLED", "escalate", "is_settled", "unreliable_failures"]

"""Transfer (black-box) attack: craft on a surrogate model, evaluate on the target.

Norm: L-inf. An inner white-box attack (``inner_kind``: one of :func:`inner_kinds`, the attacks declaring
``"transfer"`` in their ``wrappable_by``: 'fgsm' | 'pgd' | 'bim'; with ``inner_params``)
runs on a SURROGATE model, a registry entry (``surrogate``, trained at ``surrogate_budget`` with
``surrogate_seed``); the inputs it finds are returned as they are and only the engine evaluates them
on the target. This is the standard check against gradient masking (Athalye et al., 2018; Carlini
et al., "On Evaluating Adversarial Robustness", 2019): a model whose own gradients are useless
(e.g. quantised inputs, zero input gradient) is still broken by inputs transferred from a smooth model.

Provider: the engine passes an object satisfying ``SurrogateProvider`` in the attack context
(``AttackContext.surrogates``): ``provider.surrogate(entry_id, budget, seed)`` returns the surrogate
(eval mode, on the right device) and the sha256 of its weights; ``provider.cache_dir`` (or None) is
where transferred inputs are cached. A call without a provider raises ValueError.

Target calls: NONE. ``run`` never calls the target ``model`` (no forward, no backward pass). The
returned ``success`` is the SURROGATE-side verdict (the inner attack's flag: misclassified by the
surrogate), advisory only; the engine re-verifies every input on the target anyway.

Cache: it spans every batch and eps of a call, so the attack implements the whole-set hook
``attack_epsilons``. One file per key = sha256 of the JSON of {surrogate sha256, inner_kind, inner_params, seed,
eps} (``<cache_dir>/transfer-<key>.pt``), holding a dict ``{sample_id: {"x_adv": float32 tensor,
"success": bool, "x_hash": str}}``; ``x_hash`` hashes the clean input and its label, so a cached
entry is only reused for the very same (input, label). Files are written atomically (temp file +
``os.replace``, re-reading and merging the file just before writing); an unreadable or malformed
file or entry is ignored and recomputed. Since the inner attacks are seeded per sample, the same
(surrogate, inner spec, seed, eps, sample) gives bit-identical inputs for every target, whether it
was computed now or read from the cache.

Example::

    attack = Transfer(surrogate="standard", inner_params={"loss": "ce", "steps": 40, "rel_step_size": 0.1})
    out = attack.run(target, x, y, [8 / 255], context=AttackContext(surrogates=provider))
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, declared_wrappable_by
from attacks.context import SurrogateProvider

DEFAULT_INNER: dict[str, Any] = {"loss": "ce", "steps": 40, "rel_step_size": 0.1, "random_start": True}

__all__ = ["DEFAULT_INNER", "SurrogateProvider", "Transfer", "inner_kinds", "make_inner"]


def inner_kinds() -> dict[str, type[Attack]]:
    """The attacks a transfer attack may run on its surrogate: those declaring "transfer" in ``wrappable_by``."""
    return declared_wrappable_by("transfer")


def make_inner(kind: str, params: dict[str, Any], seed: int) -> Attack:
    """The inner white-box attack run on the surrogate."""
    classes = inner_kinds()
    if kind not in classes:
        raise ValueError(f"transfer: unknown inner attack {kind!r}; use one of {', '.join(classes)}")
    return classes[kind](seed=seed, **params)


def sample_hash(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of one clean input (as float32 bytes, with its shape) and its label."""
    h = hashlib.sha256(repr((tuple(x.shape), int(y))).encode())
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_cache(path: Path) -> dict[int, dict[str, Any]]:
    """The cached entries of one file; a missing, unreadable or malformed file gives {}."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any corrupt cache file is ignored and recomputed
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for sid, rec in raw.items():
        if (isinstance(sid, int) and isinstance(rec, dict) and isinstance(rec.get("x_adv"), torch.Tensor)
                and rec["x_adv"].dtype == torch.float32 and isinstance(rec.get("x_hash"), str)
                and isinstance(rec.get("success"), bool)):
            out[sid] = rec
    return out


def save_cache(path: Path, new: dict[int, dict[str, Any]]) -> None:
    """Merge ``new`` into the file (re-read just before writing) and replace it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = load_cache(path)
    merged.update(new)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(merged, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Transfer(Attack):
    name = "transfer"
    family = "fixed-budget"
    norm = "linf"
    kind = "transfer"

    def __init__(self, *, seed: int = 0, surrogate: str, surrogate_budget: str = "quick", surrogate_seed: int = 0,
                 inner_kind: str = "pgd", inner_params: dict[str, Any] | None = None) -> None:
        super().__init__(seed=seed)
        self.surrogate, self.surrogate_budget, self.surrogate_seed = str(surrogate), str(surrogate_budget), \
            int(surrogate_seed)
        self.inner_kind = inner_kind
        self.inner_params = copy.deepcopy(dict(DEFAULT_INNER if inner_params is None else inner_params))
        make_inner(self.inner_kind, self.inner_params, self.seed)  # fail early on a bad kind or parameters
        json.dumps(self.inner_params, sort_keys=True)  # part of the cache key: must be JSON

    def cache_key(self, surrogate_sha256: str, eps: float) -> str:
        spec = {"surrogate_sha256": surrogate_sha256, "inner_kind": self.inner_kind,
                "inner_params": self.inner_params, "seed": self.seed, "eps": float(eps)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def validate(self, model: nn.Module, context: AttackContext) -> None:
        if context.surrogates is None:
            raise ValueError("transfer: no surrogate provider bound (the engine passes AttackContext.surrogates)")

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """Transferred inputs per eps; ``model`` (the target) is never called; success is surrogate-side."""
        provider: SurrogateProvider = context.surrogates  # type: ignore[assignment]  # checked by validate
        if x.shape[0] == 0:  # nothing to craft: do not make the provider load (or train) the surrogate
            return [BatchResult(x.new_zeros(x.shape), torch.zeros(0, dtype=torch.bool)) for _ in epsilons]
        sids = [int(i) for i in ids.tolist()]
        surrogate, sha = provider.surrogate(self.surrogate, self.surrogate_budget, self.surrogate_seed)
        cache_dir = provider.cache_dir
        x_cpu, y_cpu = x.detach().to("cpu", torch.float32), y.detach().cpu()
        hashes = [sample_hash(x_cpu[i], y_cpu[i]) for i in range(x.shape[0])]
        out = []
        for eps in epsilons:
            x_adv = x.detach().clone()
            success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            path = None if cache_dir is None else Path(cache_dir) / f"transfer-{self.cache_key(sha, eps)}.pt"
            cached = {} if path is None else load_cache(path)
            missing = []
            for row, sid in enumerate(sids):
                rec = cached.get(sid)
                if rec is not None and rec["x_hash"] == hashes[row] and rec["x_adv"].shape == x.shape[1:]:
                    x_adv[row] = rec["x_adv"].to(device=x.device, dtype=x.dtype)
                    success[row] = rec["success"]
                else:
                    missing.append(row)
            if missing:
                new = self._craft(surrogate, x, y, eps, sids, missing, bs, context)
                for row, (xa, ok) in zip(missing, new, strict=True):
                    x_adv[row] = xa.to(device=x.device, dtype=x.dtype)
                    success[row] = ok
                if path is not None:
                    save_cache(path, {sids[row]: {"x_adv": xa.detach().to("cpu", torch.float32).clone(),
                                                  "success": bool(ok), "x_hash": hashes[row]}
                                      for row, (xa, ok) in zip(missing, new, strict=True)})
            out.append(BatchResult(x_adv, success))
        return out

    def _craft(self, surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: list[int],
               rows: list[int], batch_size: int, context: AttackContext) -> list[tuple[torch.Tensor, bool]]:
        """Run the inner attack on the surrogate for the given rows; (x_adv row, surrogate success) each."""
        param = next(surrogate.parameters(), None)
        dev = param.device if param is not None else x.device
        sel = torch.tensor(rows, dtype=torch.long, device=x.device)
        xs = x.detach()[sel].to(device=dev, dtype=torch.float32)
        ys = y[sel].to(dev)
        sid = torch.tensor([ids[r] for r in rows], dtype=torch.long)
        inner = make_inner(self.inner_kind, self.inner_params, self.seed)
        out = inner.run(surrogate, xs, ys, [eps], sample_ids=sid, batch_size=batch_size, context=context)
        x_adv = out.x_adv[0].detach().float()
        ok = out.success[0].cpu().tolist()
        return [(x_adv[i], bool(ok[i])) for i in range(len(rows))]

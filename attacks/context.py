"""What an attack may receive from its caller besides the model and the samples: an explicit context.

Some attacks need more than the model: a transfer attack needs surrogate models (and a cache for
the inputs it crafts), a detector-aware attack needs the threshold the engine rejects inputs above.
The engine and the checks pass these in an :class:`AttackContext` on every ``run``, instead of
probing the attack with ``hasattr`` and binding state onto it: no capability is bound onto an
attack between calls (only diagnostics accumulate, such as a library's captured messages or
AutoAttack's timings), and what each call may use is visible at the call site. An attack reads only the fields it
needs and ignores the others; a missing field it needs is an error it raises before any work.

Example::

    ctx = AttackContext(surrogates=provider, detector_threshold=rule.threshold)
    out = make_attack(spec.kind, dict(spec.params), spec.seed).run(model, x, y, [eps], context=ctx)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class SurrogateProvider(Protocol):
    """Where transfer attacks get their surrogate models (see :class:`bench.models.surrogates.WorkspaceSurrogates`)."""

    cache_dir: Path | None  # where transferred inputs are cached (None: no cache)

    def surrogate(self, entry_id: str, budget: str, seed: int) -> tuple[nn.Module, str]:
        """The surrogate model (eval mode, on the right device) and its weights' sha256."""
        ...


@dataclass(frozen=True)
class AttackContext:
    """Optional capabilities of one attack call.

    ``surrogates``: the provider of surrogate models (transfer attacks); ``detector_threshold``: the
    run's detector threshold, an input being rejected iff its score exceeds it (detector-aware
    attacks; without it they fall back to the model's own ``detector_eta``).
    """

    surrogates: SurrogateProvider | None = None
    detector_threshold: float | None = None

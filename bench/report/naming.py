"""Names and lookups shared by the exports and the site: file names of runs, and the paper claim
a run is compared with."""

from __future__ import annotations

import re

from bench.store.database import Run
from registry.entry import Claim, Entry


def _slug_part(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "_", text.lower())


def run_slug(run: Run) -> str:
    """The file name (without extension) of a run's page and export files: safe characters only,
    since it is both a path and a link (a stored protocol name with '/' or '..' must not escape)."""
    return f"{_slug_part(run.entry_id)}--{_slug_part(run.protocol)}--run{run.id}"


def same_eps(a: float, b: float) -> bool:
    """Claims quote eps rounded (0.031 for 8/255): equal within 2e-3 counts as the same budget."""
    return abs(a - b) < 2e-3


def headline_claim(entry: Entry | None, dataset: str, eps: float) -> Claim | None:
    """The paper's lowest robust number at this eps (its strongest reported attack)."""
    if entry is None:
        return None
    claims = [c for c in entry.claims_for(dataset) if same_eps(c.eps, eps) and c.robust is not None]
    return min(claims, key=lambda c: c.robust) if claims else None  # type: ignore[arg-type, return-value]

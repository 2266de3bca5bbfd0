"""Typed declarations of defense entries and of the papers' claimed numbers."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from torch import nn

from defenses.training import Recipe

ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
LINK_SCHEMES = ("http", "https")
KINDS = ("standard", "adversarial-training", "regulariser", "detector", "test-time", "ensemble", "pretrained")


def is_http_url(value: object) -> bool:
    r"""True when ``value`` is an absolute http(s) URL with a host that a browser reads the same way.

    A link target from user data must never run script: ``javascript:``, ``vbscript:`` and ``data:``
    URLs do, and browsers drop tabs and newlines anywhere in a URL and trim leading spaces and control
    characters, so ``"java\tscript:..."`` and ``" javascript:..."`` are live too. Any whitespace or
    non-printable character is therefore refused rather than normalised away, as are backslashes
    (read as slashes in http URLs); the scheme must be spelled out as ``http://`` or ``https://``
    (no ``//host`` relative-protocol or ``https:host`` forms) and name a host.
    """
    if not isinstance(value, str) or not value or "\\" in value:
        return False
    if any(c.isspace() or not c.isprintable() for c in value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    scheme = parts.scheme.lower()
    return scheme in LINK_SCHEMES and value[len(scheme):len(scheme) + 3] == "://" and bool(host)


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    url: str = ""
    file: str = ""  # the paper's text under ../shared/papers/, when it is one of ours


@dataclass(frozen=True)
class Claim:
    """A number the paper reports, kept apart from anything we measure."""

    dataset: str
    norm: str
    eps: float
    attack: str
    clean: float | None
    robust: float | None
    table: str
    architecture: str = ""
    note: str = ""
    detection_auc: float | None = None  # detector entries: the paper's detection ROC-AUC (%) for this attack

    def short(self) -> str:
        """One line: what was attacked at which budget and what the paper reports."""
        where = f"{self.dataset} {self.attack}" + (f"@{self.eps:.3g}" if self.eps else "")
        figures = [f"{k} {v}" for k, v in (("clean", self.clean), ("robust", self.robust),
                                            ("detection AUC", self.detection_auc)) if v is not None]
        return f"{where}: {', '.join(figures)} ({self.table})"


@dataclass(frozen=True)
class Entry:
    """A defense: how to build (and train or load) it, and what its paper claims.

    ``architectures`` maps a dataset to a registered architecture name or to a factory.
    A trained entry has a ``recipe``; a pretrained one has ``pretrained`` loaders (dataset ->
    callable returning the model with its weights); a test-time defense ``wraps`` another entry's
    trained model with ``wrapper`` (the evaluated model is the wrapper). ``adaptive_attacks`` names the attacks that
    apply to it (implemented by later attack work); ``forward_passes`` is per prediction.
    """

    id: str
    name: str
    description: str
    paper: Paper
    kind: str
    architectures: Mapping[str, str | Callable[[], nn.Module]]
    recipe: Recipe | None = None
    pretrained: Mapping[str, Callable[[], nn.Module]] | None = None
    wraps: str | None = None  # test-time defenses: the entry whose trained model is wrapped
    wrapper: Callable[[nn.Module, str], nn.Module] | None = None  # (base model, dataset) -> defended model
    claims: tuple[Claim, ...] = ()
    forward_passes: int = 1
    randomized: bool = False
    adaptive_attacks: tuple[str, ...] = ()
    version: str = "1"
    notes: str = ""
    source: str = "builtin"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not ENTRY_ID.match(self.id):
            raise ValueError(f"entry id {self.id!r} must match {ENTRY_ID.pattern}")
        if self.kind not in KINDS:
            raise ValueError(f"entry {self.id}: kind must be one of {', '.join(KINDS)}")
        if sum(x is not None for x in (self.recipe, self.pretrained, self.wraps)) != 1:
            raise ValueError(f"entry {self.id}: give exactly one of recipe, pretrained and wraps")
        if (self.wraps is None) != (self.wrapper is None):
            raise ValueError(f"entry {self.id}: wraps and wrapper go together")
        object.__setattr__(self, "architectures", MappingProxyType(dict(self.architectures)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def links(self) -> dict[str, str]:
        """Every field the site renders as a link, by its dotted name (``bench submit`` checks each one)."""
        return {"paper.url": self.paper.url}

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.architectures)

    def claims_for(self, dataset: str) -> list[Claim]:
        return [c for c in self.claims if c.dataset == dataset]

    def architecture_name(self, dataset: str) -> str:
        arch = self.architectures[dataset]
        return arch if isinstance(arch, str) else getattr(arch, "__name__", "custom")

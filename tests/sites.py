"""Hand-written stores for the site tests: runs whose stored rows give known figures, and entries.

The rows follow the cascade's bookkeeping (see :func:`add_run`) so :func:`bench.report.summary.summarize`
reads back the intended accuracies. Any run column can be overridden, which is how the XSS tests
store hostile text in fields that never pass ``bench submit`` (protocol name and JSON, provenance).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from torch import nn

from bench.protocol.protocols import get_protocol
from bench.store.database import Result, Stage, Store
from registry.entry import Entry, Paper

PROTOCOL = get_protocol("mnist-linf-tiny-v1")
N = PROTOCOL.n_samples  # 40


def _model() -> nn.Module:
    return nn.Flatten()


def make_entry(entry_id: str, name: str, kind: str, **fields: Any) -> Entry:
    """A pretrained MNIST entry with a paper (no URL unless given); ``fields`` override any Entry field."""
    args: dict[str, Any] = dict(
        id=entry_id, name=name, description=f"{name}: a hand-written test entry.", kind=kind,
        paper=Paper(title=f"Paper of {entry_id}", authors="A. Author", venue="Test 2024"),
        architectures={"mnist": "flatten"}, pretrained={"mnist": _model})
    args.update(fields)
    return Entry(**args)


def add_run(store: Store, entry_id: str, name: str, sha: str, clean: int, worst: list[int] | None,
            **run_fields: Any) -> int:
    """A run with hand-made rows: ``clean`` samples correct, then per eps the cascade leaves
    worst[i] + 2 after its first attack, worst[i] + 1 after the second and worst[i] after the third
    (None: clean only). ``run_fields`` override the run's columns; the stages follow the attack labels,
    seeds and epsilons of its ``protocol_json`` and carry its fingerprint."""
    run = store.get_or_create_run(**{
        "entry_id": entry_id, "entry_name": name, "entry_version": "1", "protocol": PROTOCOL.name,
        "fingerprint": PROTOCOL.fingerprint, "protocol_json": PROTOCOL.run_json(PROTOCOL),
        "checkpoint_sha256": sha * 64, "budget": "tiny", "train_seed": 0, "code_version": "test", "packages": "{}",
        "device": "cpu", "n_samples": N, **run_fields})
    proto = json.loads(run.protocol_json)
    fp = run.fingerprint

    def stage(attack: str, eps: float, before: int, after: int, seed: int) -> None:
        rows = [Result(run_id=run.id, fingerprint=fp, attack=attack, eps=eps, sample=s, label=s % 10,
                       attacked=s < before, success=after <= s < before, robust_after=s < after,
                       pred=(s % 10 if s < after else (s + 1) % 10 if s < before else None),
                       linf=(eps if after <= s < before else None)) for s in range(N)]
        assert store.write_stage(Stage(run_id=run.id, fingerprint=fp, attack=attack, eps=eps, chunk_start=0,
                                       chunk_stop=N, n_attacked=before, n_broken=before - after, n_forward=before,
                                       n_backward=before, seconds=0.25, seed=seed), rows, 0.25)

    stage("clean", 0.0, N, clean, 0)
    before = clean
    for eps, w in zip(proto["epsilons"], worst, strict=True) if worst is not None else ():
        for spec, left in zip(proto["attacks"], (w + 2, w + 1, w), strict=True):
            after = min(before, left)
            stage(spec["label"], eps, before, after, spec["seed"])
            before = after
    return run.id


URL_ATTRS = ("href", "src", "xlink:href", "action", "formaction", "data", "poster", "srcset", "background")


class _Targets(HTMLParser):
    """Collects URL-valued attributes, and the href and text of each ``<a href>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str]] = []
        self.anchors: list[tuple[str, str]] = []
        self._open: list[list[str] | None] = []  # one per open <a>: [href, text so far], None without href

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [(tag, name, value or "") for name, value in attrs if name in URL_ATTRS]
        if tag == "a":
            href = dict(attrs).get("href")
            self._open.append(None if href is None else [href, ""])

    def handle_data(self, data: str) -> None:
        for a in self._open:
            if a is not None:
                a[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            a = self._open.pop()
            if a is not None:
                self.anchors.append((a[0], a[1]))


def link_targets(html: str) -> list[tuple[str, str, str]]:
    """Every (tag, attribute, value) of a URL-valued attribute in ``html``, character references decoded."""
    parser = _Targets()
    parser.feed(html)
    parser.close()
    return parser.found


def anchors(html: str) -> list[tuple[str, str]]:
    """(href, text) of every ``<a href>`` in ``html``."""
    parser = _Targets()
    parser.feed(html)
    parser.close()
    return parser.anchors


# A submission file of a pretrained entry (never trained here): the API and record tests submit it.
PRETRAINED = '''
import torch
from torch import nn
from registry import Entry, Paper


def linear():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


ENTRY = Entry(id="frozen-linear", name="Frozen linear", description="pretrained, never trained here",
              paper=Paper("none", "nobody", "nowhere"), kind="pretrained",
              architectures={"mnist": linear}, pretrained={"mnist": linear})
'''


def site_body(page: str) -> str:
    """A site page without the line naming its source (database or records) and its build time."""
    import re

    return re.sub(r"Generated [^ ]+", "", re.sub(r"rows in <code>[^<]*</code>", "", page))

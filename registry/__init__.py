"""The registry: built-in entries plus the user submissions registered with ``bench submit``.

A submission is a Python file that defines ``ENTRY`` (one :class:`Entry`) or ``ENTRIES`` (a list).
``bench submit FILE`` validates it and copies it into the workspace's ``submissions/`` folder, so
it is then trained, evaluated and shown like a built-in entry.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from registry.builtin import BUILTIN_ENTRIES, DEMO_ENTRIES
from registry.detectors import DETECTOR_ENTRIES
from registry.entry import Claim, Entry, Paper, is_http_url
from registry.errors import EntryError
from registry.regularisers import REGULARISER_ENTRIES
from registry.test_time import TEST_TIME_ENTRIES

__all__ = ["ALL_BUILTIN", "BUILTIN_ENTRIES", "DEMO_ENTRIES", "Claim", "Entry", "Paper", "all_entries", "check_links",
           "get_entry", "is_http_url", "load_submission_file", "submit_file"]


def load_submission_file(path: Path) -> list[Entry]:
    """Import a submission file and return the entries it declares (one-line errors on failure)."""
    path = Path(path)
    if not path.is_file():
        raise EntryError(f"submission file not found: {path}")
    if path.suffix != ".py":
        raise EntryError(f"submission {path} must be a Python file (.py)")
    mod_name = f"gauntlet_submission_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise EntryError(f"cannot import submission {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any error in user code becomes one line
        sys.modules.pop(mod_name, None)
        raise EntryError(f"submission {path} failed to load: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    found = getattr(module, "ENTRIES", None)
    if found is None:
        found = [module.ENTRY] if hasattr(module, "ENTRY") else []
    entries = list(found)
    if not entries or not all(isinstance(e, Entry) for e in entries):
        raise EntryError(f"submission {path} must define ENTRY (an Entry) or ENTRIES (a list of Entry)")
    return [replace(e, source=str(path)) for e in entries]


ALL_BUILTIN: tuple[Entry, ...] = BUILTIN_ENTRIES + REGULARISER_ENTRIES + DETECTOR_ENTRIES + TEST_TIME_ENTRIES


def _submitted(submissions_dir: Path | None) -> list[Entry]:
    if submissions_dir is None or not submissions_dir.is_dir():
        return []
    out: list[Entry] = []
    for path in sorted(submissions_dir.glob("*.py")):
        out.extend(load_submission_file(path))
    return out


def all_entries(submissions_dir: Path | None = None) -> dict[str, Entry]:
    """Built-in entries followed by submitted ones, by id."""
    entries: dict[str, Entry] = {e.id: e for e in ALL_BUILTIN}
    for e in _submitted(submissions_dir):
        if e.id in entries and entries[e.id].source == "builtin":
            raise EntryError(f"submitted entry id {e.id!r} clashes with a built-in entry")
        entries[e.id] = e
    return entries


def get_entry(entry_id: str, submissions_dir: Path | None = None) -> Entry:
    entries = all_entries(submissions_dir)
    try:
        return entries[entry_id]
    except KeyError:
        raise EntryError(f"unknown entry {entry_id!r}; known: {', '.join(entries)}") from None


def check_links(entry: Entry) -> None:
    """Refuse any link field that is set and not an http(s) URL (see :func:`registry.entry.is_http_url`).

    The site shows these fields as links, so a ``javascript:`` or ``data:`` target would be a stored
    script in every reader's browser. The message names the entry and the field on one line (``repr``
    escapes tabs and newlines; long values are cut).
    """
    for name, url in entry.links.items():
        if url and not is_http_url(url):
            shown = url if len(url) <= 60 else url[:59] + "…"
            raise EntryError(f"entry {entry.id!r}: {name} must be an http:// or https:// URL, not {shown!r}")


def submit_file(path: Path, submissions_dir: Path) -> list[Entry]:
    """Validate a submission and copy it into the workspace; returns its entries."""
    entries = load_submission_file(path)
    builtin_ids = {e.id for e in ALL_BUILTIN}
    for e in entries:
        if e.id in builtin_ids:
            raise EntryError(f"submitted entry id {e.id!r} clashes with a built-in entry")
        check_links(e)
    submissions_dir.mkdir(parents=True, exist_ok=True)
    target = submissions_dir / f"{entries[0].id}.py"
    others = {x.id: p for p in submissions_dir.glob("*.py") if p != target
              for x in load_submission_file(p)}
    for e in entries:
        if e.id in others:
            raise EntryError(f"entry id {e.id!r} is already submitted in {others[e.id]}")
    shutil.copyfile(path, target)
    return [replace(e, source=str(target)) for e in entries]

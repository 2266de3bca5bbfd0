"""Export stored runs for other tools: RobustBench-style JSON (one file per run) or per-sample CSV.

Why: RobustBench keeps one ``model_info`` JSON per model (``link``, ``name``, ``authors``,
``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps``,
``clean_acc``, ``reported``, ``autoattack_acc``, ``footnote``, and for models evaluated beyond
AutoAttack ``external`` and ``unreliable``). :func:`export_json` writes the same keys so that
Gauntlet's numbers drop into tools that read those files, with two differences:

* values are JSON numbers, booleans and null, never numbers in strings (RobustBench writes ``"53.08"``);
* ``external`` keeps RobustBench's meaning, the "AA + external" robust accuracy (the strongest
  evaluation's figure, a number): here our ranked worst case at the primary eps (``ranked_acc``).
  Every exported figure is Gauntlet's own evaluation; the paper's number is ``reported``.

Added keys: ``worst_case_acc`` (worst case over the cascade at the primary eps), ``ranked_acc``
(that worst case with the samples the sanity checks exposed counted as broken, see
:attr:`bench.report.summary.CheckedSummary.ranked_worst`), ``flags`` (failed check names, unreliable first) and
``gauntlet`` (provenance: run id, entry, protocol and fingerprint, checkpoint hash, code version,
budget, seeds, sample counts, worst case per eps; for an escalated run, ``escalation``: its policy,
remedies, the protocol's own worst case per eps and the seconds it took). An escalated run's
``clean_acc`` and worst cases include its escalation stages. Accuracies are percentages, unrounded; a
figure that was not measured (AutoAttack not in the protocol, no row at the primary eps) is null.

:func:`export_csv` writes every stored per-sample row of a run (the raw material of every figure):
``None`` as an empty cell, booleans as 0/1. Both are deterministic for a given database (sorted keys,
fixed row order), so exports can be diffed. Example::

    from bench.report.export import export
    paths = export(Store("gauntlet-out/gauntlet.db"), all_entries(), Path("out"), "json")
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.report.naming import headline_claim, run_slug
from bench.report.summary import CheckedSummary, summarize
from bench.store.database import Result, Run, Store
from registry.entry import Entry, is_http_url

FORMATS = ("json", "csv")

CSV_COLUMNS = ("run_id", "entry_id", "protocol", "fingerprint", "attack", "eps", "sample", "label", "attacked",
               "success", "robust_after", "pred", "linf", "l2", "l0", "detail", "score", "rejected")


def _num(value: float | None) -> float | None:
    """A float for JSON: None for missing or NaN (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _slug(run: Run) -> str:
    return run_slug(run)


def _additional_data(entry: Entry | None) -> bool | None:
    """Trained beyond the benchmark's training set? Ours train (or wrap a model trained) on it only;
    a pretrained entry may say so in ``extra['additional_data']``, else it is unknown."""
    if entry is None:
        return None
    if "additional_data" in entry.extra:
        return bool(entry.extra["additional_data"])
    return None if entry.pretrained is not None else False


def _footnote(s: CheckedSummary) -> str:
    attacks = ", ".join(s.attack_labels)
    note = (f"Evaluated by Gauntlet, protocol {s.run.protocol} ({s.run.n_samples} samples, "
            f"{s.protocol.get('norm', 'Linf')}); worst case over {attacks}.")
    if not s.complete:
        note += f" Incomplete run: {s.n_evaluated} of {s.run.n_samples} samples evaluated."
    if s.unreliable:
        note += " Evaluation possibly unreliable: " + ", ".join(c.name for c in s.flags if c.severity == "unreliable")
        note += "."
    return note


def model_info(s: CheckedSummary, entry: Entry | None) -> dict[str, Any]:
    """One run as a RobustBench-style model_info dict (see the module docstring)."""
    run = s.run
    dataset = s.protocol["dataset"]
    eps = s.primary_eps
    claim = headline_claim(entry, dataset, eps)
    ranked = _num(s.ranked_worst)
    paper = entry.paper if entry is not None else None
    info: dict[str, Any] = {
        "link": paper.url if paper and is_http_url(paper.url) else None,  # never a javascript:/data: target
        "name": entry.name if entry is not None else run.entry_name,
        "authors": paper.authors if paper else None,
        "additional_data": _additional_data(entry),
        "number_forward_passes": int(entry.forward_passes) if entry is not None else 1,
        "dataset": dataset,
        "venue": paper.venue if paper else None,
        "architecture": entry.architecture_name(dataset) if entry is not None and dataset in entry.architectures
        else None,
        "eps": eps,
        "clean_acc": _num(s.clean_acc),
        "reported": _num(claim.robust) if claim is not None else None,
        "autoattack_acc": _num(s.autoattack),
        "external": ranked,
        "unreliable": bool(s.unreliable),
        "footnote": _footnote(s),
        "worst_case_acc": _num(s.worst.get(eps)),
        "ranked_acc": ranked,
        "flags": [c.name for c in s.flags],
    }
    info["gauntlet"] = {
        "run_id": run.id,
        "entry_id": run.entry_id,
        "entry_name": run.entry_name,
        "entry_version": run.entry_version,
        "registered": entry is not None,
        "kind": entry.kind if entry is not None else None,
        "paper_title": paper.title if paper else None,
        "protocol": run.protocol,
        "fingerprint": run.fingerprint,
        "norm": s.protocol.get("norm"),
        "checkpoint_sha256": run.checkpoint_sha256,
        "code_version": run.code_version,
        "budget": run.budget,
        "train_seed": run.train_seed,
        "n_samples": run.n_samples,
        "n_evaluated": s.n_evaluated,
        "complete": bool(s.complete),
        "worst_case_by_eps": {str(float(e)): _num(w) for e, w in sorted(s.worst.items())},
        "adaptive_applied": s.adaptive_applied,
        "detector": s.detector is not None,
        "clean_rejection_rate": _num(s.clean_rejection_rate),
    }
    if s.escalated and s.escalation is not None:  # only escalated runs carry the key: others export as before
        rounds = s.escalation.get("rounds", [])
        info["gauntlet"]["escalation"] = {
            "policy": s.escalation.get("policy"),
            "remedies": [r for rnd in rounds for r in rnd.get("remedies", [])],
            "worst_case_before_by_eps": {str(float(e)): _num(w) for e, w in sorted(s.worst_before.items())},
            "clean_acc_before": _num(100.0 * s.clean_correct_before / s.n_evaluated) if s.n_evaluated else None,
            "seconds": _num(float(s.escalation.get("seconds", 0.0))),
        }
    return info


def export_json(store: Store, entries: dict[str, Entry], out_dir: Path) -> list[Path]:
    """Write ``<run_slug>.json`` per stored run into ``out_dir``; returns the paths in run order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in store.runs():
        s = summarize(store, run)
        path = out_dir / f"{run_slug(s.run)}.json"
        text = json.dumps(model_info(s, entries.get(run.entry_id)), sort_keys=True, indent=2, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def csv_row(run: Run, r: Result) -> list[Any]:
    """One stored result as CSV cells, in :data:`CSV_COLUMNS` order."""
    values = (run.id, run.entry_id, run.protocol, r.fingerprint, r.attack, r.eps, r.sample, r.label, r.attacked,
              r.success, r.robust_after, r.pred, r.linf, r.l2, r.l0, r.detail, r.score, r.rejected)
    return [_cell(v) for v in values]


def export_csv(store: Store, out_dir: Path) -> list[Path]:
    """Write ``<run_slug>.csv`` per stored run (every per-sample row, sorted by attack, eps, sample)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in store.runs():
        path = out_dir / f"{_slug(run)}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_row(run, r) for r in store.results(run.id))
        paths.append(path)
    return paths


def export(store: Store, entries: dict[str, Entry], out_dir: Path, fmt: str) -> list[Path]:
    """Export every stored run in ``fmt`` (``json`` or ``csv``) into ``out_dir`` (created)."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        return export_json(store, entries, out_dir)
    return export_csv(store, out_dir)

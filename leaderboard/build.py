"""Render the static, offline leaderboard: ``index.html`` plus one page per evaluated run.

Runs are grouped by protocol fingerprint (never mixed) and ranked by worst-case accuracy at the
primary epsilon. Every figure is computed from stored rows by :mod:`bench.store.summary`; the paper's
claims come from the registry entry when it is still registered.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from bench import code_version
from bench.report.naming import headline_claim, same_eps
from bench.report.naming import run_slug as slug_of
from bench.report.run_report import EscalationReport
from bench.report.summary import CheckedSummary, summarize_all
from bench.store.database import Store, now, store_name
from leaderboard.curves import entry_curves
from leaderboard.findings import findings
from registry.entry import Claim, Entry, is_http_url


@dataclass
class ClaimView:
    claim: Claim
    diff: float | None  # our worst case at the claim's eps minus the claimed robust accuracy


def fmt_eps(eps: float, dataset: str) -> str:
    if dataset.startswith("cifar"):
        k = eps * 255
        return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"
    return f"{eps:g}"


def attack_desc(a: dict) -> str:
    """A protocol attack as a reader needs it: label plus any non-default budget."""
    p = a.get("params", {})
    bits = []
    if a["kind"] == "autoattack" and ("n_target_classes" in p or "square_queries" in p):
        bits.append(f"{p.get('n_target_classes', 9)} target classes, Square {p.get('square_queries', 5000)} queries")
    if a["kind"] == "pgd":
        step = p.get("step_size", None)
        bits.append(f"{p['steps']} steps, step {step if step is not None else str(p['rel_step_size']) + ' x eps'}"
                    + (f", {p['restarts']} restarts" if p.get("restarts", 1) > 1 else ""))
    if a.get("at") == "primary":
        bits.append("primary eps only")
    return a["label"] + (f" ({'; '.join(bits)})" if bits else "")


def fmt_pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.1f}"


def link(text: object, url: object) -> Markup:
    """``<a href="url">text</a>`` when ``url`` is an http(s) URL, else ``text`` alone; both escaped.

    The one way a template turns user data into a link (the ``link`` filter: ``{{ title|link(url) }}``).
    Stored entries and records written without ``bench submit`` are never validated, so a
    ``javascript:`` or ``data:`` target from them is shown as plain text instead of a live link.
    """
    if is_http_url(url):
        return Markup('<a href="{}">{}</a>').format(url, text)
    return escape(text)


def run_slug(s: CheckedSummary) -> str:
    """The file name of a run's page (see :func:`bench.report.naming.run_slug`)."""
    return slug_of(s.run)


def build_site(store: Store, out: Path, entries: dict[str, Entry], source: str | None = None) -> Path:
    """Write the site into ``out`` and return the path of ``index.html`` (``source``: what the rows were
    read from, as the pages name it; default the database file's name)."""
    env = Environment(loader=PackageLoader("leaderboard", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["pct"] = fmt_pct
    env.filters["link"] = link
    env.filters["attack_desc"] = attack_desc
    env.filters["value"] = lambda v: "" if v is None or v != v else f"{v:.4f}"
    summaries = summarize_all(store)
    groups: dict[str, list[CheckedSummary]] = {}
    for s in summaries:
        groups.setdefault(s.run.fingerprint, []).append(s)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    for static in ("style.css", "board.js"):
        shutil.copyfile(Path(__file__).parent / "templates" / static, out / static)
    tables = []
    for fp, runs in sorted(groups.items(), key=lambda kv: kv[1][0].run.protocol):
        # ranked by the worst case at the primary eps; an unreliable evaluation by its worst case including
        # the samples the sanity checks' own attacks broke (RobustBench's rule for flagged entries)
        runs.sort(key=lambda s: (-(s.ranked_worst if s.ranked_worst is not None else -1.0), s.run.entry_id))
        proto = runs[0].protocol
        dataset = proto["dataset"]
        rows = []
        for rank, s in enumerate(runs, 1):
            entry = entries.get(s.run.entry_id)
            claim = headline_claim(entry, dataset, s.primary_eps)
            worst = s.worst.get(s.primary_eps)
            rows.append({
                "rank": rank, "s": s, "entry": entry, "slug": run_slug(s), "claim": claim,
                "diff": None if claim is None or worst is None else worst - float(claim.robust or 0.0),
                "adaptive": adaptive_accuracy(s),
            })
        tables.append({
            "fingerprint": fp, "protocol": proto, "name": runs[0].run.protocol, "rows": rows,
            "eps_cols": [(e, fmt_eps(e, dataset)) for e in proto["epsilons"]],
            "primary_label": fmt_eps(proto["primary_eps"], dataset),
            "aa_all": all(a["at"] == "all" for a in proto["attacks"] if a["kind"] == "autoattack"),
        })
    meta = {"generated": now(), "code_version": code_version(), "db": source or store_name(store.url)}
    compare = compare_protocols(summaries)
    kinds = sorted({r["entry"].kind for t in tables for r in t["rows"] if r["entry"] is not None})
    (out / "index.html").write_text(env.get_template("index.html").render(tables=tables, meta=meta, compare=compare,
                                                                          kinds=kinds))
    (out / "findings.html").write_text(env.get_template("findings.html").render(
        findings=findings(summaries, entries), meta=meta, slug=run_slug))
    for s in summaries:
        entry = entries.get(s.run.entry_id)
        dataset = s.protocol["dataset"]
        claims = [ClaimView(c, _claim_diff(s, c)) for c in (entry.claims_for(dataset) if entry else [])]
        page = env.get_template("run.html").render(
            s=s, entry=entry, claims=claims, meta=meta, dataset=dataset,
            eps_cols=[(e, fmt_eps(e, dataset)) for e in s.epsilons],
            packages=json.loads(s.run.packages), protocol_json=json.dumps(s.protocol, indent=1, sort_keys=True),
            curves=entry_curves(s), evidence=lambda c: json.dumps(c.evidence, indent=1, sort_keys=True),
            suite_id=store.checks(s.run.id)[0].suite if s.checks else None,
            esc=EscalationReport.from_summary(s),
            esc_labels=list(dict.fromkeys(st["label"] for st in (s.escalation or {}).get("stages", [])
                                          if st.get("kind") != "clean")),
        )
        (out / "runs" / f"{run_slug(s)}.html").write_text(page)
    return out / "index.html"


def adaptive_accuracy(s: CheckedSummary) -> float | None:
    """Accuracy after the entry's declared adaptive attacks at the primary eps (None if none ran)."""
    labels = [a for a in s.adaptive_applied if (a, s.primary_eps) in s.cells]
    return s.cells[(labels[-1], s.primary_eps)].accuracy if labels else None


def protocol_family(name: str) -> str:
    """A protocol's name without its version (``mnist-linf-quick-v2`` -> ``mnist-linf-quick``)."""
    return re.sub(r"-v\d+$", "", name)


def compare_protocols(summaries: list[CheckedSummary]) -> list[dict]:
    """Per dataset and protocol family with runs under several versions (v1 and v2): each entry's worst
    case at the primary eps under each, side by side (the latest run per entry and protocol). Another
    family (the 40-sample ``tiny`` one, say) is not a version of the same evaluation: not compared."""
    out = []
    groups = sorted({(s.protocol["dataset"], protocol_family(s.run.protocol)) for s in summaries})
    for ds, family in groups:
        runs = [s for s in summaries if s.protocol["dataset"] == ds and protocol_family(s.run.protocol) == family]
        names = sorted({s.run.protocol for s in runs})
        if len(names) < 2:
            continue
        cells: dict[str, dict[str, CheckedSummary]] = {}
        for s in runs:
            cells.setdefault(s.run.entry_id, {})[s.run.protocol] = s
        rows = [{"entry": e, "by": {n: (by[n].worst.get(by[n].primary_eps) if n in by else None) for n in names},
                 "unreliable": {n: by[n].unreliable for n in by}, "escalated": {n: by[n].escalated for n in by},
                 "slugs": {n: run_slug(by[n]) for n in by}} for e, by in sorted(cells.items())]
        out.append({"dataset": ds, "family": family, "names": names, "rows": rows})
    return out


def _claim_diff(s: CheckedSummary, c: Claim) -> float | None:
    """Our worst case minus the claimed robust accuracy, when the claim's eps is on our grid."""
    close = [e for e in s.epsilons if same_eps(e, c.eps)]
    if not close or c.robust is None or s.worst.get(close[0]) is None:
        return None
    return s.worst[close[0]] - float(c.robust)

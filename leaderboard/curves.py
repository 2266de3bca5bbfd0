"""The entry page's curves, as inline SVG (see :mod:`leaderboard.svg`), from stored rows and checks.

* accuracy vs eps: each cascade stage's accuracy per eps (cumulative: after it and every earlier
  stage) and the worst case; plus the sanity checks' independent FGSM and PGD runs per eps;
* accuracy vs steps: the checks' independent PGD runs with growing step counts and, under v2
  protocols, the protocol's own probe-steps-K probes;
* minimal distances: the empirical CDF of the per-sample distances of each minimum-norm / L0
  attack, one chart per norm (their units differ).
"""

from __future__ import annotations

import re

from markupsafe import Markup

from bench.report.summary import CheckedSummary
from leaderboard.svg import ecdf_chart, line_chart


def entry_curves(s: CheckedSummary) -> dict[str, Markup]:
    out: dict[str, Markup] = {}
    zero = (0.0, s.clean_acc)
    series = [(a, [zero] + [(e, s.cells[(a, e)].accuracy) for e in s.epsilons if (a, e) in s.cells])
              for a in s.attack_labels]
    series.append(("worst case", [zero] + [(e, s.worst[e]) for e in s.epsilons if e in s.worst]))
    sweep = next((c for c in s.checks if c.name == "rises-with-eps"), None)
    if sweep is not None and "curves" in sweep.evidence:
        cv = sweep.evidence["curves"]
        for name in ("fgsm", "pgd"):
            series.append((f"{name} alone (checks, {cv['n']} clean-correct)",
                           [(0.0, 100.0)] + list(zip(cv["eps"], cv[name], strict=True))))
    out["eps"] = line_chart(series, x_label="eps (L-inf)", y_label="accuracy (%)", data_curve="eps",
                            title=f"{s.run.entry_id}: accuracy vs eps")
    steps_series = []
    steps = next((c for c in s.checks if c.name == "rises-with-steps"), None)
    if steps is not None and "curve" in steps.evidence:
        cv = steps.evidence["curve"]
        steps_series.append((f"PGD (checks, {cv['n']} clean-correct)", list(zip(cv["steps"], cv["accuracy"],
                                                                                strict=True))))
    probes = sorted((int(m.group(1)), p) for p in s.extras_by_mode("probe")
                    if (m := re.fullmatch(r"probe-steps-(\d+)", p.label)))
    if probes:
        steps_series.append(("protocol probe-steps-K", [(k, p.accuracy) for k, p in probes]))
    if steps_series:
        out["steps"] = line_chart(steps_series, x_label="PGD steps", y_label="accuracy (%)", data_curve="steps",
                                  title=f"{s.run.entry_id}: accuracy vs steps at eps {s.primary_eps:g}", x_log=True)
    by_norm: dict[str, list[tuple[str, list[float]]]] = {}
    for m in s.extras_by_mode("min-norm") + s.extras_by_mode("l0"):
        if m.attacked:
            # samples an attack did not break count in the denominator at an infinite distance
            by_norm.setdefault(m.norm, []).append((m.label, m.distances + [float("inf")] * (m.attacked - m.broken)))
    for norm, ser in by_norm.items():
        out[f"distances-{norm}"] = ecdf_chart(ser, x_label=f"{norm} distance", data_curve=f"distances-{norm}",
                                              title=f"{s.run.entry_id}: minimal {norm} distance per sample")
    return out

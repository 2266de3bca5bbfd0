"""Escalation: what the benchmark does when its sanity checks say the protocol's attacks were fooled.

:mod:`~bench.escalation.policy` (the versioned policy: failed check -> remedies -> stages),
:mod:`~bench.escalation.distill` (a surrogate distilled from the model's predictions) and
:mod:`~bench.escalation.run` (plan, run and re-check, storing ordinary per-sample rows).
"""

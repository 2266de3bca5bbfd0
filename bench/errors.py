"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class BenchError(Exception):
    """Bad input or missing resource; the message is shown to the user as is."""


class AttackContractError(RuntimeError):
    """An attack returned an input outside the epsilon ball or the [0, 1] box (a bug, never ignored)."""


def user_errors() -> tuple[type[Exception], ...]:
    """Every exception whose message is meant for the user: ours, the registry's and the defenses'.

    Imported on demand: ``registry`` pulls in every built-in entry (and torch), which ``bench.errors``
    itself should not.
    """
    from defenses.errors import DefenseError
    from registry.errors import EntryError

    return (BenchError, EntryError, DefenseError)

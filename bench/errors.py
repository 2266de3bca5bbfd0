"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class BenchError(Exception):
    """Bad input or missing resource; the message is shown to the user as is."""


class AttackContractError(RuntimeError):
    """An attack returned an input outside the epsilon ball or the [0, 1] box (a bug, never ignored)."""

"""The defenses' user-facing error (for example an unknown architecture name in a submission).

Defined here so that ``defenses`` imports nothing from ``bench``; the CLI and the API report it
like ``bench.errors.BenchError``: one line, a non-zero exit.
"""


class DefenseError(Exception):
    """A defense cannot be built as declared; the message is shown as is."""

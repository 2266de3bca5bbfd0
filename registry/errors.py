"""The registry's user-facing error (unknown entry, bad submission file).

It lives here, not in ``bench``, because the registry imports nothing from ``bench`` (the
benchmark core depends on the registry, never the reverse). The CLI and the API treat it like
``bench.errors.BenchError``: one line, a non-zero exit.
"""


class EntryError(Exception):
    """An unknown entry id or a submission that cannot be registered; the message is shown as is."""

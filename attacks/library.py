"""Keeping pyautoattack quiet: its diagnostics are captured per attack instead of spilling into the CLI.

pyautoattack reports through three channels: ``print`` (every one gated by the sub-attacks'
``verbose`` flag, which our attacks always set to False), the ``auto-attack`` logger (e.g. APGD's
"there are 100 points with zero gradient! ..." on every call with the DLR loss, which without a
configured handler Python's last-resort handler writes to stderr, once per call and eps) and
``warnings.warn`` (the same checks when no logger is given). :func:`quiet_library` captures the
logger records and the warnings raised inside its block, and anything the library prints to stdout
or stderr from the calling thread, and counts each distinct message in a ``Counter`` the attack
keeps (``library_messages``), so nothing is lost: nothing the benchmark computes reads them (its
own checks measure zero gradients themselves, see :mod:`bench.checks.probes`), but they stay inspectable.

Stream capture swaps ``sys.stdout`` / ``sys.stderr`` only for prints of the calling thread: a
progress display refreshed by another thread (rich's live bar in the CLI) keeps writing to the
terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

LOGGER = "auto-attack"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _ThreadStream:
    """Stands in for sys.stdout / sys.stderr: the owning thread's writes go to a buffer, every other
    thread's (and every other attribute: isatty, encoding, fileno, ...) to the real stream."""

    def __init__(self, target: TextIO) -> None:
        self.target, self.owner, self.buffer = target, threading.get_ident(), io.StringIO()

    def write(self, s: str) -> int:
        if threading.get_ident() == self.owner:
            return self.buffer.write(s)
        return self.target.write(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@contextlib.contextmanager
def quiet_library(messages: Counter[str]) -> Iterator[None]:
    """Within the block, pyautoattack's log records, warnings and prints are counted in ``messages``."""
    logger = logging.getLogger(LOGGER)
    handler = _Collect()
    propagate = logger.propagate
    out, err = _ThreadStream(sys.stdout), _ThreadStream(sys.stderr)
    lines: list[str] = []
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):  # type: ignore[type-var]
            warnings.simplefilter("always")
            try:
                yield
            finally:
                lines = handler.lines + [str(w.message) for w in caught]
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        for line in lines + out.buffer.getvalue().splitlines() + err.buffer.getvalue().splitlines():
            if line.strip():
                messages[line.strip()] += 1

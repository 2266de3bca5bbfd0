"""The ``bench`` command line: a thin layer over :mod:`bench.api`."""

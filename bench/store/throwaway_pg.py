"""A throwaway PostgreSQL server for the tests and the scale benchmark (:mod:`bench.benchmarks.perf_scale`):
``initdb`` and ``pg_ctl`` on a temporary directory, listening on a Unix socket only (no TCP port to collide
with), stopped by :meth:`PostgresServer.stop`.

Debian's ``postgresql`` package provides the binaries (under ``/usr/lib/postgresql/<version>/bin``, not
on the PATH); ``.ci/run`` installs it when it is missing. PostgreSQL refuses to run as root, so as root
the server runs as the package's ``postgres`` user. Without the binaries the PostgreSQL tests are
skipped with the reason (tests/conftest.py), unless ``GAUNTLET_REQUIRE_POSTGRES=1`` (set by CI), which fails
them instead; the benchmark skips its PostgreSQL figures.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.errors import BenchError

MISSING = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on the PATH, else the newest Debian install."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One server; :meth:`new_database` hands each test its own empty database."""

    def __init__(self) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise BenchError(MISSING)
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="gauntlet-pg-"))
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = self.root / "data"
        self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                        "--no-sync", "-E", "UTF8"])
        options = f"-c listen_addresses='' -c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                        "-w", "start"])
        self._names = itertools.count()

    def _as_owner(self, cmd: list[str]) -> None:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.root}"

    def new_database(self) -> str:
        """A new empty database's SQLAlchemy URL."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(host=str(self.root), user=self.user, dbname="postgres", autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

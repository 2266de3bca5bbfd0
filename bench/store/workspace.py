"""Where Gauntlet keeps its files: database, checkpoints, submissions and the built site.

The root is ``--home`` (CLI), else ``GAUNTLET_HOME``, else ``./gauntlet-out``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "GAUNTLET_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Workspace:
        root = Path(home or os.environ.get(ENV_HOME) or "gauntlet-out").expanduser().resolve()
        return cls(root)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'gauntlet.db'}"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def cache(self) -> Path:
        """Reusable attack artefacts (transfer attacks' adversarial inputs)."""
        return self.root / "cache"

    @property
    def site(self) -> Path:
        return self.root / "site"

"""Static leaderboard site built from the database (reads only)."""

from leaderboard.build import build_site

__all__ = ["build_site"]

"""Where the SQL and migration folders shipped with pubctl are.

In a checkout they are the top-level ``sql/`` and ``alembic/`` folders; a wheel carries
them inside the package, as ``pubctl/sql`` and ``pubctl/migrations``. They are plain
folders, not Python packages, so a checkout's ``alembic/`` never shadows the Alembic
library for code run from the repository root.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pubctl.errors import PubctlError

_PACKAGE = Path(__file__).resolve().parent


def _find(inside_package: str, in_checkout: str, marker: str) -> Path:
    candidates = [_PACKAGE / inside_package]
    # Beside the package only in a checkout: installed, the folder beside it would be
    # another distribution's (site-packages/alembic is the Alembic library).
    if (_PACKAGE.parent / "pyproject.toml").is_file():
        candidates.append(_PACKAGE.parent / in_checkout)
    for folder in candidates:
        if (folder / marker).is_file():
            return folder
    raise PubctlError(
        f"this pubctl installation has no {inside_package} folder (looked for {marker} "
        f"in {_PACKAGE / inside_package} and {_PACKAGE.parent / in_checkout})",
        hint="reinstall pubctl",
    )


@functools.cache
def sql_folder() -> Path:
    """``sql/``: the named queries and the current schema."""
    return _find("sql", "sql", "queries.sql")


@functools.cache
def migrations_folder() -> Path:
    """``alembic/``: Alembic's env.py and the revisions with their frozen SQL."""
    return _find("migrations", "alembic", "env.py")

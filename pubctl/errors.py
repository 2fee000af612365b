"""Errors pubctl reports to its user, and the exit codes they map to.

Exit codes: 0 success, 1 ``verify`` found drift, 2 bad usage or bad input (click),
3 an operation failed (database unreachable, not migrated, a refused write, ...),
4 the database was migrated by a newer pubctl than this one.
"""

from __future__ import annotations

EXIT_DRIFT = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3
EXIT_SCHEMA_NEWER = 4


class PubctlError(Exception):
    """An error with a one-line message for the user and an optional hint."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotMigratedError(PubctlError):
    """The database has no pubctl schema (or an incomplete one)."""


class SchemaNewerError(PubctlError):
    """The database schema is newer than this pubctl knows."""

    exit_code = EXIT_SCHEMA_NEWER


class MissingSourceError(PubctlError):
    """The application's tables or columns that pubctl needs are not there."""

"""Naming who a wait is behind: a session by pid, or a prepared transaction by gid.

A prepared (two-phase) transaction keeps its locks with no session at all: it can only
be ended by ``COMMIT PREPARED`` or ``ROLLBACK PREPARED`` with its gid, so that is what
pubctl names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LockHolder:
    """A session (or prepared transaction) holding a lock pubctl waits for."""

    pid: int | None
    gid: str | None
    usename: str | None
    application_name: str | None
    state: str | None
    open_for_s: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LockHolder:
        """From a query row that has (at least) these columns."""
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})

    def describe(self) -> str:
        """One line: who, and what is visible of its state."""
        if self.gid is not None:
            parts = [f"prepared transaction {self.gid!r}"]
            if self.usename:
                parts.append(f"role {self.usename}")
            if self.open_for_s is not None:
                parts.append(f"prepared {float(self.open_for_s):.0f}s ago")
            quoted = "'" + self.gid.replace("'", "''") + "'"
            parts.append(f"end it with COMMIT PREPARED {quoted} or ROLLBACK PREPARED {quoted}")
            return ", ".join(parts)
        parts = [f"pid {self.pid}"]
        if self.usename:
            parts.append(f"role {self.usename}")
        if self.application_name:
            parts.append(f"application {self.application_name!r}")
        if self.state:
            parts.append(self.state)
        if self.open_for_s is not None:
            parts.append(f"open {float(self.open_for_s):.0f}s")
        return ", ".join(parts)

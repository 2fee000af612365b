"""Released migrations are never edited: a database migrated by one pubctl release must
stay what every later release thinks it is. A change is a new revision on top
(README.md, "Writing a migration"); the digests below only ever gain entries."""

from __future__ import annotations

import hashlib

from pubctl import revision, shipped

RELEASED = {
    "0100_baseline.py": "e5e76dacbdb501525f98fd4ddda7063d9cc46aad18d65e42b8a5550edca22003",
    "0100_baseline.up.sql": "0b1bb013f0acbc92ba33d27519023a8eefe96016b73aa34fa7402421ea3c52c6",
    "0100_baseline.down.sql": "a8f58b9999dce87fcd467039ed1a2cd6682b9d18db566e97c95553bce95775eb",
}


def test_released_migrations_are_unchanged() -> None:
    folder = shipped.migrations_folder() / "versions"
    for name, digest in RELEASED.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, (
            f"{name} belongs to a released revision: write a new revision instead"
        )


def test_every_released_revision_is_pinned() -> None:
    pinned = {name.split("_", 1)[0] for name in RELEASED}
    assert pinned <= set(revision.REVISIONS)
    assert "0100" in pinned

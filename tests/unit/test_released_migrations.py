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
    "0101_recheck_the_switch_after_the_mark.down.sql": "42df58cde628b63acb3e258f40c3929b60d3552dcf813200f0543822c27543c7",
    "0101_recheck_the_switch_after_the_mark.py": "1b9bbd08a5059d1112dac026057e9fc4607a06e5e19727b5c43e7a69219fd648",
    "0101_recheck_the_switch_after_the_mark.up.sql": "a76fbf8f97d007c4c286576af5f9092a23f3f0814586feaf46f7aeba6391c957",
    "0102_harmless_where_it_runs.down.sql": "b3a3e83693dcf5bdb807c3fe3081dd86e670ca65f140375f5c457562ef50770e",
    "0102_harmless_where_it_runs.py": "949e1e610982304067e5793f62b97e0851891433360bd3709a6aff4abd7cbbe6",
    "0102_harmless_where_it_runs.up.sql": "1b17c86bc41a010a715d6e29f1d9128a65cd7d2a826366a53165a3076e3b0bb6",
    "0103_verify_reads_every_row.down.sql": "dd22579937e8fc5c4bea62060ace57536262a84a4e6b6685b0fc7a81b0e78227",
    "0103_verify_reads_every_row.py": "821684a9f9d4699940e2bc6ebe1add716f40156d19db4fd2c7864b03bb4f380f",
    "0103_verify_reads_every_row.up.sql": "2cfa60618ad1cef40016e0b8effb1b5c132a110877843fe8de277ae9dd5aedca",
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

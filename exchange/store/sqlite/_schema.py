"""The SQLite schema: its migrations (``schema/v*.sql``) and how a file is brought
to ``SCHEMA_VERSION``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from exchange.errors import Unavailable
from exchange.store._common import newer_schema
from exchange.store.sqlite._sql import _transaction


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: it brings a database at ``version - 1`` to ``version``."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A step that runs ``sql`` statement by statement (``executescript`` would
    commit the migration's transaction)."""

    def apply(conn: sqlite3.Connection) -> None:
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                conn.execute(statement)
                statement = ""
        if statement.strip():
            raise ValueError(f"a migration ends in an incomplete statement: {statement!r}")

    return apply


# One step per file, schema/v1.sql, v2.sql, ...: what each brings.
_STEPS = (
    "partners, token credentials, objects, outbox, relay positions",
    "partner kinds, sectors and roles; communities; token and certificate credentials;"
    " object audiences; registry version",
    "the audit log, its checkpoints and its bus mirror position",
    "the public key that signs the audit log's checkpoints",
    "observables held per submitter (a version is unique per creator); set-aside"
    " outbox rows; the disk-full probe",
    "the index of the objects a delivery entry lists",
    "erasure: erased versions keep their rows without bodies; erasures for the relay",
)
_SCHEMA = resources.files(__package__) / "schema"
MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(version, summary, _script((_SCHEMA / f"v{version}.sql").read_text()))
    for version, summary in enumerate(_STEPS, start=1)
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if (
        version == 0
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'partners'"
        ).fetchone()
    ):
        # A data directory of the first release: it has the version 1 tables but
        # did not record a version.
        return 1
    return int(version)


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database on ``conn`` to ``SCHEMA_VERSION`` in one transaction.

    Returns (version found, version now). Unavailable if the file was written by a
    newer release (whose schema this one does not know)."""
    found = _schema_version(conn)
    if found == SCHEMA_VERSION:
        return found, found
    with _transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        found = _schema_version(conn)
        if found > SCHEMA_VERSION:
            raise Unavailable(newer_schema(found, SCHEMA_VERSION))
        for step in MIGRATIONS[found:]:
            step.apply(conn)
        # PRAGMA takes no parameters; SCHEMA_VERSION is an int of this module.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    return found, SCHEMA_VERSION

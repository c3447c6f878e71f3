"""The PostgreSQL schema: its migrations (``schema/v*.sql``), applied once under an
advisory lock by whichever replica starts first."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from exchange.errors import Unavailable
from exchange.store._common import newer_schema


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: it brings a database at ``version - 1`` to ``version``.
    To change the schema, append a step; never edit one that has shipped."""

    version: int
    summary: str
    sql: str


# One step per file, schema/v1.sql, v2.sql, ...: what each brings.
_STEPS = (
    "partners, communities, credentials, objects with their audiences, outbox, relay"
    " positions, registry version; the audit log, its head, checkpoints, bus mirror"
    " position and signing key",
    "observables held per submitter (a version is unique per creator); set-aside"
    " outbox rows; the disk-full probe",
    "the index of the objects a delivery entry lists",
    "erasure: erased versions keep their rows without bodies; erasures for the relay",
)
_SCHEMA = resources.files(__package__) / "schema"
MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(version, summary, (_SCHEMA / f"v{version}.sql").read_text())
    for version, summary in enumerate(_STEPS, start=1)
)
SCHEMA_VERSION = MIGRATIONS[-1].version

# Which steps a database has, one row per step applied.
_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    summary    text NOT NULL,
    applied_at double precision NOT NULL
)
"""


# The transaction advisory lock that migrations hold: "exchange" in ASCII, as a bigint.
_MIGRATION_LOCK = int.from_bytes(b"exchange", "big")


async def _migrate(conn: Any) -> tuple[int, int]:
    """Bring the database on ``conn`` to ``SCHEMA_VERSION`` in one transaction.
    Returns (version found, version now); Unavailable if a newer release wrote it."""
    async with conn.transaction():
        # Replicas that start together queue here: the first migrates, the others
        # then find the current version. Held until this transaction ends.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        found = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if found > SCHEMA_VERSION:
            raise Unavailable(newer_schema(found, SCHEMA_VERSION))
        for step in MIGRATIONS[found:]:
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO schema_version (version, summary, applied_at) VALUES ($1, $2, $3)",
                step.version,
                step.summary,
                time.time(),
            )
    return found, SCHEMA_VERSION

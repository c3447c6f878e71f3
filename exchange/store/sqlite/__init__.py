"""The embedded store: one SQLite file in the data directory.

All writes go through one connection on one thread, so a bundle's checks
(creator, duplicate, revoked) and its inserts are one serialized transaction.
Reads that must not wait behind a large commit (credential look-ups) use a
second connection. WAL mode lets the ``exchange`` CLI write to the same file
while the server runs.

The schema is versioned with ``PRAGMA user_version``: ``MIGRATIONS`` lists the
steps from an empty file to ``SCHEMA_VERSION`` (``schema/v*.sql``), and ``open``
applies the missing ones in one transaction. To change the schema, append a step;
never edit one that has shipped.

A write that fails because the file system is full raises ``StoreFull`` and marks
the store full (``_room.Room``): ``ping`` then fails until the data directory has
``resume_free_bytes`` free again and a probe write succeeds.

One module per concern: ``_connection`` (connections, threads, lifecycle, leases),
``_registry`` (partners, communities, credentials), ``_objects`` (objects, outbox),
``_erasure`` (erased bodies, erasures for the relay), ``_audit`` (audit log,
checkpoints), ``_retention`` (what retention may erase), over ``_sql`` (plumbing) and
``_schema``.
"""

from __future__ import annotations

from exchange.store.sqlite._audit import _AuditRows
from exchange.store.sqlite._erasure import _ErasureRows
from exchange.store.sqlite._objects import _ObjectRows
from exchange.store.sqlite._registry import _RegistryRows
from exchange.store.sqlite._retention import _RetentionRows
from exchange.store.sqlite._schema import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from exchange.store.sqlite._sql import PROBE_BYTES, RESUME_FREE_BYTES

__all__ = [
    "MIGRATIONS",
    "PROBE_BYTES",
    "RESUME_FREE_BYTES",
    "SCHEMA_VERSION",
    "Migration",
    "SqliteStore",
    "migrate",
]


class SqliteStore(_RegistryRows, _ObjectRows, _ErasureRows, _AuditRows, _RetentionRows):
    """``Store`` on a SQLite file (created, or migrated to the current schema, on open).
    ``metrics``: where to show that the disk is full (``exchange_store_full``)."""

"""The PostgreSQL store: one database shared by every server process (replicas)
and the ``exchange`` CLI, through a pool of asyncpg connections per process.

It behaves as ``SqliteStore`` does (same errors, same messages, same
orders); what differs is how writers that run in several processes at once are
kept from stepping on each other:

- The audit log is one hash chain. Every transaction that appends entries
  (``commit_objects``, ``append_audit``) first locks the chain head, the one row
  of ``audit_head`` (``SELECT ... FOR UPDATE``), reads the last index and leaf
  hash there, hashes its entries after them and moves the head, all before it
  commits. Appenders therefore take turns, whichever process they run in: no
  fork and no gap in the chain.
- ``commit_objects`` takes that lock at the start of its transaction, before its
  checks and inserts: see ``_lock_audit_head`` for why object sequence numbers
  depend on it.
- A lease (``hold_lease``) is a session advisory lock, held by a connection kept
  outside the pool for that purpose: PostgreSQL releases it when the process
  exits or the connection is lost, and another process can then take it.
- Schema migrations run in one transaction under a transaction advisory lock, so
  that replicas starting together migrate once.

Every call waits at most ``timeout_s`` to connect, to get a connection from the
pool and for each statement, and reports an unreachable database as
``Unavailable`` (without the password of the URL); the pool reconnects when the
database is back, with no need to open the store again. A database out of space
(53100) answers ``StoreFull`` and marks the store full (``_room.Room``) until a
probe write in ``ping`` succeeds; text PostgreSQL cannot store (a NUL character)
answers ``InvalidArgument`` naming what held it, never an internal error.

One module per concern, as in the SQLite store: ``_connection`` (pool, leases,
lifecycle, how statements run), ``_registry``, ``_objects`` (objects, outbox),
``_audit`` (the chain, checkpoints), ``_retention`` (what retention may erase), over
``_sql`` (errors, columns, rows) and
``_schema`` (``schema/v*.sql``).
"""

from __future__ import annotations

from exchange.store.postgres._audit import _AuditRows
from exchange.store.postgres._connection import PROBE_BYTES, lease_key
from exchange.store.postgres._erasure import _ErasureRows
from exchange.store.postgres._objects import _ObjectRows
from exchange.store.postgres._registry import _RegistryRows
from exchange.store.postgres._retention import _RetentionRows
from exchange.store.postgres._schema import MIGRATIONS, SCHEMA_VERSION, Migration

__all__ = [
    "MIGRATIONS",
    "PROBE_BYTES",
    "SCHEMA_VERSION",
    "Migration",
    "PostgresStore",
    "lease_key",
]


class PostgresStore(_RegistryRows, _ObjectRows, _ErasureRows, _AuditRows, _RetentionRows):
    """``Store`` on a PostgreSQL database (its schema created, or migrated to the
    current version, on open). ``url``: postgresql://USER@HOST:PORT/DATABASE (the
    password is best given as PGPASSWORD). Each process opens ``pool_size``
    connections at most, plus one while it holds leases. ``metrics``: where to show
    that the database is full (``exchange_store_full``)."""

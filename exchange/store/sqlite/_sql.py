"""SQLite plumbing shared by the store's concerns: connections, columns, the
write transaction, disk-space checks."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from exchange.store._erasure import REFERRING_TYPES

# -- rows <-> domain types -------------------------------------------------------------

_PARTNER_COLUMNS = (
    "p.partner_id, p.name, p.identity_id, p.kind, p.sectors, p.roles, p.default_tlp,"
    " p.disabled, (SELECT json_group_array(m.community) FROM memberships m"
    " WHERE m.partner_id = p.partner_id)"
)
_CREDENTIAL_COLUMNS = (
    "c.credential_id, c.partner_id, c.kind, c.digest, c.created_at, c.expires_at, c.revoked_at"
)
_OBJECT_COLUMNS = (
    "o.seq, o.submitter, o.accepted_at, o.object_id, o.object_type, o.version,"
    " o.created_by_ref, o.tlp, o.body, o.labels, o.revoked, o.spec_version, o.audience"
)
# Bytes as bytes, even where someone stored them as text (verification reads what is there).
_AUDIT_BYTES = "CAST(data AS BLOB), CAST(leaf_hash AS BLOB)"
_CHECKPOINT_COLUMNS = "tree_size, CAST(note AS BLOB), CAST(signature AS BLOB)"
# The oldest outbox rows, up to ?1 of them and ?2 bytes of bodies (at least one).
_PENDING_WITHIN = (
    "WITH head AS (SELECT b.seq, length(o.body) AS size FROM outbox b JOIN objects o"
    " USING (seq) ORDER BY b.seq LIMIT ?1),"
    " upto AS (SELECT seq, sum(size) OVER (ORDER BY seq) AS total FROM head)"
    " SELECT {columns} FROM outbox b JOIN objects o USING (seq)"
    " WHERE b.seq IN (SELECT seq FROM upto WHERE total <= ?2"
    " OR seq = (SELECT min(seq) FROM upto)) ORDER BY b.seq"
)
# The ids that the versions stored after seq ?1 refer to (schema/v7.sql fills it alike
# for what was stored before): REFERRING_TYPES of exchange/store/_erasure.py.
_INSERT_REFS = (  # noqa: S608 (constants only)
    "INSERT OR IGNORE INTO object_refs (ref_id, seq)"
    " SELECT r.value, o.seq FROM objects o, json_each(CAST(o.body AS TEXT)) r"
    " WHERE o.seq > ?1 AND o.object_type IN ({types})"
    " AND r.key IN ('sighting_of_ref', 'source_ref', 'target_ref') AND r.type = 'text'"
    " UNION"
    " SELECT e.value, o.seq FROM objects o, json_each(CAST(o.body AS TEXT), '$.object_refs') e"
    " WHERE o.seq > ?1 AND o.object_type IN ({types}) AND e.type = 'text'"
).format(types=", ".join(f"'{t}'" for t in REFERRING_TYPES))
# Where the relay's last publish landed on a topic-partition (offsets only grow).
_RECORD_POSITION = (
    "INSERT INTO relay_positions VALUES (?, ?, ?)"
    " ON CONFLICT (topic, partition) DO UPDATE"
    " SET next_offset = max(next_offset, excluded.next_offset)"
)
# SQLite allows 32,766 host parameters per statement; stay well below.
_CHUNK = 500

# While the store is full, ping resumes writes once the data directory's file system
# has this much free (room for one bundle of the default largest size,
# limits.max_bundle_bytes: no flapping on the last few pages) and a probe write of
# PROBE_BYTES succeeds.
RESUME_FREE_BYTES = 16 * 1024 * 1024
PROBE_BYTES = 256 * 1024
# An I/O error (rather than SQLITE_FULL) counts as a full disk below this much free.
_NEARLY_FULL_BYTES = 1024 * 1024


# How long a statement waits for another process's lock (a CLI on the data directory).
BUSY_TIMEOUT_MS = 30_000


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the partner gets its answer (invariant 1).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS:d}")
    # Deleted content is overwritten, not left in free pages: an erased body must not
    # stay readable in the file (exchange erase; docs/erasure.md).
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _tune_writer(conn: sqlite3.Connection) -> None:
    """The writer connection's settings for large commits. Durability is unchanged:
    with synchronous=FULL every commit still syncs the WAL before it returns.
    - A page cache of 16 MiB (default 2 MiB): a bundle of 1,000 objects dirties more
      than 2 MiB of pages, which SQLite would otherwise spill to the WAL mid-way. Not
      more: the cache is resident memory, and large objects flowing through fill it.
    - Checkpoints every 10,000 WAL pages (~40 MiB, default 1,000): pages that several
      commits rewrite (index pages) are copied to the database once, not once per
      few bundles. The WAL file grows to about that size between checkpoints."""
    conn.execute("PRAGMA cache_size=-16384")
    conn.execute("PRAGMA wal_autocheckpoint=10000")


def _json_list(items: Iterable[str]) -> str:
    return orjson.dumps(list(items)).decode()


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on ``directory``'s file system."""
    found = os.statvfs(directory)
    return found.f_bavail * found.f_frsize


def _out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` says the file system (or the database file) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return False
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    # SQLite reports some writes that fail on a full disk (growing the WAL index) as
    # I/O errors: one on a file system with (nearly) no room left is the full disk.
    if code & 0xFF == sqlite3.SQLITE_IOERR:
        try:
            return _free_bytes(directory) < _NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (a failed COMMIT too)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            # Else the connection would stay inside the failed transaction, and every
            # later BEGIN would fail.
            self._rollback()
            raise

    def _rollback(self) -> None:
        # After some errors (SQLITE_FULL) SQLite has rolled back already: a ROLLBACK
        # would then fail, and hide the error that matters.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

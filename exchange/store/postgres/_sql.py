"""PostgreSQL plumbing shared by the store's concerns: which errors mean what,
columns and statements, rows to domain types."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Sequence
from typing import Any

import asyncpg

from exchange.store import AuditRow
from exchange.store._erasure import REFERRING_TYPES

# On the connection that holds the leases: if its process's host vanishes (no FIN, no
# RST), the database drops the connection, and with it the leases, after about 25 s
# instead of the operating system's default of hours; another replica then relays.
# NOTIFY'd by every commit that adds outbox rows; delivered when it commits.
_OUTBOX_CHANNEL = "exchange_outbox"
_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


# -- errors ---------------------------------------------------------------------------------

# What an unreachable, restarting or overloaded database (or a wrong URL) raises.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,  # connect, acquire or statement took longer than timeout_s
    asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-call
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28: user, password
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.InterfaceError,  # the connection or pool is closed
    asyncpg.exceptions.InternalClientError,  # a connection the database closed under it
)


def _unreachable(exc: BaseException) -> bool:
    # DataError is an InterfaceError too, but it means a bad argument: a bug.
    return (
        isinstance(exc, _UNREACHABLE)
        and not isinstance(exc, asyncpg.DataError)
        and not _out_of_space(exc)
    )


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the database has no room left (its disk is full)."""
    if isinstance(exc, asyncpg.exceptions.DiskFullError):  # 53100
        return True
    # Files PostgreSQL writes outside a relation (temporary files, say) can fail
    # with an I/O error that names the cause.
    if isinstance(exc, asyncpg.exceptions.PostgresIOError):
        return "No space left on device" in str(exc)
    return False


# A NUL character (U+0000) in text: PostgreSQL's text, and jsonb's strings, cannot
# hold it (SQLite can; validation refuses it in objects before either store sees it).
_UNSTORABLE_TEXT = (
    asyncpg.exceptions.CharacterNotInRepertoireError,  # 22021: 0x00 in text
    asyncpg.exceptions.UntranslatableCharacterError,  # 22P05: \u0000 in jsonb
)


def _unstorable(exc: BaseException) -> bool:
    if isinstance(exc, _UNSTORABLE_TEXT):
        return True
    # asyncpg's own refusal to encode an argument (a lone surrogate, say).
    return isinstance(exc, asyncpg.DataError) and isinstance(exc.__cause__, UnicodeError)


def _has_nul(*texts: str) -> bool:
    return any("\x00" in text for text in texts)


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection was closed under the call (by a database
    restart, say), rather than that the database is slow or refuses."""
    if isinstance(exc, asyncpg.DataError):
        return False
    return isinstance(
        exc,
        asyncpg.ConnectionDoesNotExistError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | ConnectionError,
    )


def _secrets(url: str) -> list[str]:
    """The passwords ``url`` holds, as written and decoded (to scrub from messages)."""
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [
            v
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() in {"password", "sslpassword"}
        ]
    found += [urllib.parse.unquote(s) for s in found]
    # Longest first, so that a decoded password inside the written one goes too.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _count(status: str) -> int:
    """The row count of a command status ("UPDATE 1", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


# -- rows <-> domain types -------------------------------------------------------------

_PARTNER_COLUMNS = (
    "p.partner_id, p.name, p.identity_id, p.kind, p.sectors, p.roles, p.default_tlp,"
    " p.disabled, ARRAY(SELECT m.community FROM memberships m"
    " WHERE m.partner_id = p.partner_id)"
)
_CREDENTIAL_COLUMNS = (
    "c.credential_id, c.partner_id, c.kind, c.digest, c.created_at, c.expires_at, c.revoked_at"
)
_OBJECT_COLUMNS = (
    "o.seq, o.submitter, o.accepted_at, o.object_id, o.object_type, o.version,"
    " o.created_by_ref, o.tlp, o.body, o.labels, o.revoked, o.spec_version, o.audience::text"
)
_AUDIT_COLUMNS = "idx, data, leaf_hash, at, action, actor, partner, object_id, owner"
# Where the relay's last publish landed on a topic-partition (offsets only grow).
_RECORD_POSITION = (
    "INSERT INTO relay_positions (topic, partition, next_offset)"
    " VALUES ($1, $2, $3) ON CONFLICT (topic, partition) DO UPDATE"
    " SET next_offset = GREATEST(relay_positions.next_offset, excluded.next_offset)"
)
# The oldest outbox rows, up to $1 of them and $2 bytes of bodies (at least one).
_PENDING_WITHIN = (
    "WITH head AS (SELECT b.seq, {length}(o.body) AS size FROM outbox b JOIN objects o"
    " USING (seq) ORDER BY b.seq LIMIT $1),"
    " upto AS (SELECT seq, sum(size) OVER (ORDER BY seq) AS total FROM head)"
    " SELECT {columns} FROM outbox b JOIN objects o USING (seq)"
    " WHERE b.seq IN (SELECT seq FROM upto WHERE total <= $2"
    " OR seq = (SELECT min(seq) FROM upto)) ORDER BY b.seq"
)
_CHECKPOINT_COLUMNS = "tree_size, note, signature"
# Each stored version with its outbox row; executemany runs it once per version, in
# bundle order, so that sequence numbers follow the bundle.
# Objects, their outbox rows and the ids they refer to (object_refs: REFERRING_TYPES of
# exchange/store/_erasure.py) in one statement, one array per column (a round trip per
# bundle, not per object); seqs are assigned in bundle order.
_INSERT_OBJECTS = """
WITH stored AS (
    INSERT INTO objects (object_id, version, version_key, object_type, created_by_ref,
        submitter, tlp, labels, revoked, spec_version, accepted_at, body, audience)
    SELECT o.object_id, o.version, o.version_key, o.object_type, o.created_by_ref, $12,
        o.tlp, ARRAY(SELECT jsonb_array_elements_text(o.labels::jsonb)), o.revoked,
        o.spec_version, $13, o.body, o.audience::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::boolean[], $9::text[], $10::bytea[], $11::text[])
        WITH ORDINALITY AS o(object_id, version, version_key, object_type, created_by_ref,
                             tlp, labels, revoked, spec_version, body, audience, n)
    ORDER BY o.n
    RETURNING seq, object_type, body
), queued AS (
    INSERT INTO outbox (seq) SELECT seq FROM stored
)
INSERT INTO object_refs (ref_id, seq)
    SELECT r, s.seq FROM stored s, object_refs_of(s.body) r
    WHERE s.object_type IN ({types})
""".format(types=", ".join(f"'{t}'" for t in REFERRING_TYPES))  # noqa: S608 (constants)
_INSERT_AUDIT = """
INSERT INTO audit (idx, at, action, actor, partner, object_id, owner, data, leaf_hash)
SELECT * FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::bytea[], $9::bytea[])
"""


def _as_is(value: Any) -> Any:
    """A PostgreSQL array column, already a list."""
    return value


def _audit_row(row: Sequence[Any]) -> AuditRow:
    idx, data, leaf, at, action, actor, partner, object_id, owner = row
    return AuditRow(
        int(idx),
        bytes(data),
        bytes(leaf),
        float(at),
        str(action),
        str(actor),
        str(partner),
        str(object_id),
        str(owner),
    )

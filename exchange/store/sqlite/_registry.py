"""The partner registry in SQLite: partners, communities, credentials."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import replace

import orjson

from exchange.errors import AlreadyExists, NotFound
from exchange.model import (
    Community,
    Credential,
    CredentialKind,
    Partner,
)
from exchange.store._common import (
    check_first_credential,
    community_missing,
    credential_bound,
    credential_id_taken,
    credential_of,
    not_a_member,
    partner_of,
    unknown_partner,
)
from exchange.store.sqlite._connection import _Connections
from exchange.store.sqlite._sql import _CREDENTIAL_COLUMNS, _PARTNER_COLUMNS, _chunks, _json_list

# -- registry helpers (inside a write transaction) ----------------------------------------


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE registry_state SET version = version + 1 WHERE id = 1")


def _require_partner(conn: sqlite3.Connection, partner_id: str) -> None:
    if not conn.execute("SELECT 1 FROM partners WHERE partner_id = ?", (partner_id,)).fetchone():
        raise NotFound(unknown_partner(partner_id))


def _require_communities(conn: sqlite3.Connection, names: Iterable[str]) -> None:
    wanted = sorted(set(names))
    known: set[str] = set()
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        known.update(
            str(n)
            for (n,) in conn.execute(
                f"SELECT name FROM communities WHERE name IN ({marks})",  # noqa: S608
                chunk,
            )
        )
    missing = [n for n in wanted if n not in known]
    if missing:
        raise NotFound(community_missing(missing))


def _insert_credential(conn: sqlite3.Connection, credential: Credential) -> None:
    bound = conn.execute(
        "SELECT credential_id, partner_id FROM credentials"
        " WHERE credential_id = ? OR (kind = ? AND digest = ?)",
        (credential.credential_id, credential.kind.value, credential.digest),
    ).fetchone()
    if bound is not None:
        if bound[0] == credential.credential_id:
            raise AlreadyExists(credential_id_taken(credential.credential_id, bound[1]))
        raise AlreadyExists(credential_bound(credential.kind, bound[1], bound[0]))
    conn.execute(
        "INSERT INTO credentials (credential_id, partner_id, kind, digest, created_at,"
        " expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            credential.credential_id,
            credential.partner_id,
            credential.kind.value,
            credential.digest,
            credential.created_at,
            credential.expires_at,
            credential.revoked_at,
        ),
    )


class _RegistryRows(_Connections):
    """``RegistryStore`` on SQLite."""

    # -- partners -----------------------------------------------------------------
    async def add_partner(self, partner: Partner, credential: Credential) -> None:
        check_first_credential(partner, credential)

        def run(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "SELECT partner_id, identity_id FROM partners"
                " WHERE partner_id = ? OR identity_id = ?",
                (partner.partner_id, partner.identity_id),
            ).fetchone()
            if taken is not None:
                what = "partner id" if taken[0] == partner.partner_id else "STIX identity"
                raise AlreadyExists(
                    f"{what} already registered (partner {taken[0]}, identity {taken[1]})"
                )
            _require_communities(conn, partner.communities)
            conn.execute(
                "INSERT INTO partners (partner_id, name, identity_id, kind, sectors, roles,"
                " default_tlp, disabled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    partner.partner_id,
                    partner.name,
                    partner.identity_id,
                    partner.kind.value,
                    _json_list(partner.sectors),
                    _json_list(sorted(partner.roles)),
                    partner.default_tlp.value,
                    int(partner.disabled),
                    time.time(),
                ),
            )
            conn.executemany(
                "INSERT INTO memberships (community, partner_id) VALUES (?, ?)",
                [(c, partner.partner_id) for c in sorted(partner.communities)],
            )
            _insert_credential(conn, credential)
            _bump(conn)

        await self._write(run)

    async def get_partner(self, partner_id: str) -> Partner | None:
        def run(conn: sqlite3.Connection) -> Partner | None:
            row = conn.execute(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p WHERE p.partner_id = ?",  # noqa: S608
                (partner_id,),
            ).fetchone()
            return None if row is None else partner_of(row, orjson.loads)

        return await self._read(run)

    async def list_partners(self) -> list[Partner]:
        def run(conn: sqlite3.Connection) -> list[Partner]:
            rows = conn.execute(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p"  # noqa: S608
                " ORDER BY p.created_at, p.rowid"
            ).fetchall()
            return [partner_of(r, orjson.loads) for r in rows]

        return await self._read(run)

    async def update_partner(self, partner: Partner) -> None:
        def run(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                "UPDATE partners SET name = ?, kind = ?, sectors = ?, roles = ?,"
                " default_tlp = ?, disabled = ? WHERE partner_id = ?",
                (
                    partner.name,
                    partner.kind.value,
                    _json_list(partner.sectors),
                    _json_list(sorted(partner.roles)),
                    partner.default_tlp.value,
                    int(partner.disabled),
                    partner.partner_id,
                ),
            ).rowcount
            if updated == 0:
                raise NotFound(unknown_partner(partner.partner_id))
            _bump(conn)

        await self._write(run)

    # -- communities ----------------------------------------------------------------
    async def add_community(self, community: Community) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if conn.execute(
                "SELECT 1 FROM communities WHERE name = ?", (community.name,)
            ).fetchone():
                raise AlreadyExists(
                    f"community {community.name} already exists; choose another name, or"
                    " add partners to the existing one"
                )
            conn.execute(
                "INSERT INTO communities (name, description, created_at) VALUES (?, ?, ?)",
                (community.name, community.description, time.time()),
            )
            # Members named with the new community join it at once.
            for partner_id in sorted(set(community.members)):
                _require_partner(conn, partner_id)
                conn.execute(
                    "INSERT INTO memberships (community, partner_id) VALUES (?, ?)",
                    (community.name, partner_id),
                )
            _bump(conn)

        await self._write(run)

    async def list_communities(self) -> list[Community]:
        def run(conn: sqlite3.Connection) -> list[Community]:
            rows = conn.execute(
                "SELECT c.name, c.description, (SELECT json_group_array(m.partner_id)"
                " FROM memberships m WHERE m.community = c.name)"
                " FROM communities c ORDER BY c.name"
            ).fetchall()
            return [
                Community(str(name), str(description), tuple(sorted(orjson.loads(members))))
                for name, description, members in rows
            ]

        return await self._read(run)

    async def join_community(self, name: str, partner_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_communities(conn, [name])
            _require_partner(conn, partner_id)
            joined = conn.execute(
                "INSERT OR IGNORE INTO memberships (community, partner_id) VALUES (?, ?)",
                (name, partner_id),
            ).rowcount
            if joined:
                _bump(conn)

        await self._write(run)

    async def leave_community(self, name: str, partner_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_communities(conn, [name])
            _require_partner(conn, partner_id)
            left = conn.execute(
                "DELETE FROM memberships WHERE community = ? AND partner_id = ?",
                (name, partner_id),
            ).rowcount
            if not left:
                raise NotFound(not_a_member(name, partner_id))
            _bump(conn)

        await self._write(run)

    # -- credentials ----------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_partner(conn, credential.partner_id)
            _insert_credential(conn, credential)
            _bump(conn)

        await self._write(run)

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        def run(conn: sqlite3.Connection) -> list[Credential]:
            rows = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.partner_id = ? ORDER BY c.created_at, c.rowid",
                (partner_id,),
            ).fetchall()
            return [credential_of(r) for r in rows]

        return await self._read(run)

    async def revoke_credential(self, partner_id: str, credential_id: str, at: float) -> Credential:
        def run(conn: sqlite3.Connection) -> Credential:
            _require_partner(conn, partner_id)
            row = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.credential_id = ? AND c.partner_id = ?",
                (credential_id, partner_id),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"partner {partner_id} has no credential {credential_id}; list the"
                    " partner's credentials to see their ids"
                )
            credential = credential_of(row)
            if credential.revoked_at is not None:
                # Revoking twice keeps the first time, and changes nothing.
                return credential
            conn.execute(
                "UPDATE credentials SET revoked_at = ? WHERE credential_id = ?",
                (at, credential_id),
            )
            _bump(conn)
            return replace(credential, revoked_at=at)

        return await self._write(run)

    async def credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        # Runs on every RPC: one query on the read connection.
        def run(conn: sqlite3.Connection) -> tuple[Credential, Partner] | None:
            row = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS}, {_PARTNER_COLUMNS}"  # noqa: S608
                " FROM credentials c JOIN partners p ON p.partner_id = c.partner_id"
                " WHERE c.kind = ? AND c.digest = ?",
                (kind.value, digest),
            ).fetchone()
            if row is None:
                return None
            return credential_of(row[:7]), partner_of(row[7:], orjson.loads)

        return await self._read(run)

    async def registry_version(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (version,) = conn.execute("SELECT version FROM registry_state WHERE id = 1").fetchone()
            return int(version)

        return await self._read(run)

"""The partner registry in PostgreSQL: partners, communities, credentials."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

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
from exchange.store.postgres._audit import _lock_audit_head
from exchange.store.postgres._connection import _Connections
from exchange.store.postgres._sql import (
    _CREDENTIAL_COLUMNS,
    _PARTNER_COLUMNS,
    _as_is,
    _count,
    _has_nul,
)

# -- registry helpers (inside a write transaction) ----------------------------------------


async def _bump(conn: Any) -> None:
    await conn.execute("UPDATE registry_state SET version = version + 1 WHERE id = 1")


async def _require_partner(conn: Any, partner_id: str) -> None:
    if not await conn.fetchval("SELECT 1 FROM partners WHERE partner_id = $1", partner_id):
        raise NotFound(unknown_partner(partner_id))


async def _require_communities(conn: Any, names: Iterable[str]) -> None:
    wanted = sorted(set(names))
    if not wanted:
        return
    rows = await conn.fetch(
        "SELECT name FROM communities WHERE name = ANY($1::text[])",
        wanted,
    )
    known = {str(name) for (name,) in rows}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise NotFound(community_missing(missing))


async def _insert_credential(conn: Any, credential: Credential) -> None:
    bound = await conn.fetchrow(
        "SELECT credential_id, partner_id FROM credentials"
        " WHERE credential_id = $1 OR (kind = $2 AND digest = $3)",
        credential.credential_id,
        credential.kind.value,
        credential.digest,
    )
    if bound is not None:
        if bound[0] == credential.credential_id:
            raise AlreadyExists(credential_id_taken(credential.credential_id, bound[1]))
        raise AlreadyExists(credential_bound(credential.kind, bound[1], bound[0]))
    await conn.execute(
        "INSERT INTO credentials (credential_id, partner_id, kind, digest, created_at,"
        " expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        credential.credential_id,
        credential.partner_id,
        credential.kind.value,
        credential.digest,
        credential.created_at,
        credential.expires_at,
        credential.revoked_at,
    )


class _RegistryRows(_Connections):
    """``RegistryStore`` on PostgreSQL."""

    # -- partners -----------------------------------------------------------------
    async def add_partner(self, partner: Partner, credential: Credential) -> None:
        check_first_credential(partner, credential)

        async def run(conn: Any) -> None:
            # Taken in turn with submissions: an object whose id is this partner's
            # identity cannot be committed between the check below and the insert.
            await _lock_audit_head(conn)
            taken = await conn.fetchrow(
                "SELECT partner_id, identity_id FROM partners"
                " WHERE partner_id = $1 OR identity_id = $2",
                partner.partner_id,
                partner.identity_id,
            )
            if taken is not None:
                what = "partner id" if taken[0] == partner.partner_id else "STIX identity"
                raise AlreadyExists(
                    f"{what} already registered (partner {taken[0]}, identity {taken[1]})"
                )
            await _require_communities(conn, partner.communities)
            await conn.execute(
                "INSERT INTO partners (partner_id, name, identity_id, kind, sectors, roles,"
                " default_tlp, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                partner.partner_id,
                partner.name,
                partner.identity_id,
                partner.kind.value,
                list(partner.sectors),
                sorted(r.value for r in partner.roles),
                partner.default_tlp.value,
                partner.disabled,
                time.time(),
            )
            members = [(c, partner.partner_id) for c in sorted(partner.communities)]
            if members:
                await conn.executemany(
                    "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)", members
                )
            await _insert_credential(conn, credential)
            await _bump(conn)

        await self._write(
            run,
            "the new partner's id, name, identity, sectors or communities, or its first"
            f" {credential.kind}'s id",
        )

    async def get_partner(self, partner_id: str) -> Partner | None:
        if _has_nul(partner_id):
            return None  # nothing the database holds has one
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p WHERE p.partner_id = $1",  # noqa: S608
                partner_id,
            )
        )
        return None if row is None else partner_of(row, _as_is)

    async def list_partners(self) -> list[Partner]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p"  # noqa: S608
                " ORDER BY p.created_at, p.added"
            )
        )
        return [partner_of(r, _as_is) for r in rows]

    async def update_partner(self, partner: Partner) -> None:
        async def run(conn: Any) -> None:
            status = await conn.execute(
                "UPDATE partners SET name = $1, kind = $2, sectors = $3, roles = $4,"
                " default_tlp = $5, disabled = $6 WHERE partner_id = $7",
                partner.name,
                partner.kind.value,
                list(partner.sectors),
                sorted(r.value for r in partner.roles),
                partner.default_tlp.value,
                partner.disabled,
                partner.partner_id,
            )
            if _count(status) == 0:
                raise NotFound(unknown_partner(partner.partner_id))
            await _bump(conn)

        await self._write(run, "the partner's name or sectors")

    # -- communities ----------------------------------------------------------------
    async def add_community(self, community: Community) -> None:
        async def run(conn: Any) -> None:
            if await conn.fetchval("SELECT 1 FROM communities WHERE name = $1", community.name):
                raise AlreadyExists(
                    f"community {community.name} already exists; choose another name, or"
                    " add partners to the existing one"
                )
            await conn.execute(
                "INSERT INTO communities (name, description, created_at) VALUES ($1, $2, $3)",
                community.name,
                community.description,
                time.time(),
            )
            # Members named with the new community join it at once.
            for partner_id in sorted(set(community.members)):
                await _require_partner(conn, partner_id)
                await conn.execute(
                    "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)",
                    community.name,
                    partner_id,
                )
            await _bump(conn)

        await self._write(run, "the community's name, description or members")

    async def list_communities(self) -> list[Community]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT c.name, c.description, ARRAY(SELECT m.partner_id FROM memberships m"
                " WHERE m.community = c.name) FROM communities c ORDER BY c.name"
            )
        )
        return [
            Community(str(name), str(description), tuple(sorted(map(str, members))))
            for name, description, members in rows
        ]

    async def join_community(self, name: str, partner_id: str) -> None:
        async def run(conn: Any) -> None:
            await _require_communities(conn, [name])
            await _require_partner(conn, partner_id)
            status = await conn.execute(
                "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                name,
                partner_id,
            )
            if _count(status):
                await _bump(conn)

        await self._write(run, "the community name or the partner id")

    async def leave_community(self, name: str, partner_id: str) -> None:
        async def run(conn: Any) -> None:
            await _require_communities(conn, [name])
            await _require_partner(conn, partner_id)
            status = await conn.execute(
                "DELETE FROM memberships WHERE community = $1 AND partner_id = $2",
                name,
                partner_id,
            )
            if not _count(status):
                raise NotFound(not_a_member(name, partner_id))
            await _bump(conn)

        await self._write(run, "the community name or the partner id")

    # -- credentials ----------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        async def run(conn: Any) -> None:
            await _require_partner(conn, credential.partner_id)
            await _insert_credential(conn, credential)
            await _bump(conn)

        await self._write(run, f"the {credential.kind}'s id or partner id")

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        if _has_nul(partner_id):
            return []  # nothing the database holds has one
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.partner_id = $1 ORDER BY c.created_at, c.added",
                partner_id,
            )
        )
        return [credential_of(r) for r in rows]

    async def revoke_credential(self, partner_id: str, credential_id: str, at: float) -> Credential:
        async def run(conn: Any) -> Credential:
            await _require_partner(conn, partner_id)
            row = await conn.fetchrow(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.credential_id = $1 AND c.partner_id = $2 FOR UPDATE",
                credential_id,
                partner_id,
            )
            if row is None:
                raise NotFound(
                    f"partner {partner_id} has no credential {credential_id}; list the"
                    " partner's credentials to see their ids"
                )
            credential = credential_of(row)
            if credential.revoked_at is not None:
                # Revoking twice keeps the first time, and changes nothing.
                return credential
            await conn.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE credential_id = $2",
                at,
                credential_id,
            )
            await _bump(conn)
            return replace(credential, revoked_at=at)

        return await self._write(run, "the partner id or the credential id")

    async def credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        # Runs on every RPC: one query.
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_CREDENTIAL_COLUMNS}, {_PARTNER_COLUMNS}"  # noqa: S608
                " FROM credentials c JOIN partners p ON p.partner_id = c.partner_id"
                " WHERE c.kind = $1 AND c.digest = $2",
                kind.value,
                digest,
            )
        )
        if row is None:
            return None
        values = tuple(row)
        return credential_of(values[:7]), partner_of(values[7:], _as_is)

    async def registry_version(self) -> int:
        version = await self._read(
            lambda conn: conn.fetchval("SELECT version FROM registry_state WHERE id = 1")
        )
        return int(version)

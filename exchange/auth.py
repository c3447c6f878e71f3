"""Credentials -> Partner. The only place a credential is checked.

Tokens are 256-bit random secrets shown once; only their SHA-256 is stored. A
fast hash is right here: the secret has full entropy, so there is nothing to
brute-force, and look-up by hash means the secret itself is never compared.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from exchange.errors import PermissionDenied, Unauthenticated
from exchange.model import Partner
from exchange.store import Store

__all__ = ["TOKEN_PREFIX", "Authenticator", "hash_token", "new_token"]

TOKEN_PREFIX = "tix_"  # noqa: S105 (a prefix that makes leaked tokens easy to scan for)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def partner(self, metadata: Iterable[tuple[str, str | bytes]]) -> Partner:
        """The partner whose token is in ``authorization: Bearer <token>``."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        partner = await self._store.partner_for_token(hash_token(token.strip()))
        if partner is None:
            raise Unauthenticated("unknown or revoked token")
        if partner.disabled:
            raise PermissionDenied(f"partner {partner.partner_id} is disabled")
        return partner

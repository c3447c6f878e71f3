"""Credentials -> Partner, and roles. The only place a credential is checked.

A partner signs in with a token (``authorization: Bearer tix_...``), a TLS client
certificate bound to it (mutual TLS), or both (then they must name the same
partner). Tokens are 256-bit random secrets shown once; only their SHA-256 is
stored, and a certificate is known by its SHA-256 fingerprint. A fast hash is
right for tokens: the secret has full entropy, so there is nothing to
brute-force. The digest of a presented token is looked up, and the stored digest
is then compared with ``hmac.compare_digest``, so no secret-dependent comparison
runs in variable time.

Revocation, expiry, disabling and role or membership changes take effect on the
next call; an open stream holds an ``Access`` that re-checks its credential
whenever the registry changes (``RegistryWatch``) and ends the stream when the
credential no longer holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exchange._tasks import cancel_and_wait
from exchange.errors import PermissionDenied, Unauthenticated, Unavailable
from exchange.logs import PARTNER_ID
from exchange.model import Credential, CredentialKind, Partner, Role
from exchange.store import RegistryStore

__all__ = [
    "MISSING_CREDENTIALS",
    "TOKEN_PREFIX",
    "Access",
    "Authenticator",
    "Caller",
    "RegistryWatch",
    "bearer_token",
    "certificate_fingerprint",
    "check_credential",
    "check_enabled",
    "hash_token",
    "new_certificate_binding",
    "new_token",
    "new_token_credential",
    "require",
]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tix_"  # noqa: S105 (a prefix that makes leaked tokens easy to scan for)
_CREDENTIAL_PREFIX = {CredentialKind.TOKEN: "tok_", CredentialKind.CERTIFICATE: "crt_"}


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def certificate_fingerprint(pem: bytes | str) -> bytes:
    """SHA-256 over the DER form of a PEM certificate. Raises ValueError if it is not one."""
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text.strip())).digest()


def _credential_id(kind: CredentialKind) -> str:
    return _CREDENTIAL_PREFIX[kind] + secrets.token_hex(5)


def new_token_credential(
    partner_id: str, *, expires_in_s: float | None = None, now: float | None = None
) -> tuple[Credential, str]:
    """A new token for ``partner_id``: its stored credential and the secret (show it once)."""
    now = time.time() if now is None else now
    token = new_token()
    credential = Credential(
        credential_id=_credential_id(CredentialKind.TOKEN),
        partner_id=partner_id,
        kind=CredentialKind.TOKEN,
        digest=hash_token(token),
        created_at=now,
        expires_at=None if expires_in_s is None else now + expires_in_s,
    )
    return credential, token


def new_certificate_binding(
    partner_id: str,
    certificate_pem: bytes | str,
    *,
    expires_in_s: float | None = None,
    now: float | None = None,
) -> Credential:
    """Bind a client certificate to ``partner_id``. Raises ValueError if not PEM."""
    now = time.time() if now is None else now
    return Credential(
        credential_id=_credential_id(CredentialKind.CERTIFICATE),
        partner_id=partner_id,
        kind=CredentialKind.CERTIFICATE,
        digest=certificate_fingerprint(certificate_pem),
        created_at=now,
        expires_at=None if expires_in_s is None else now + expires_in_s,
    )


def require(partner: Partner, role: Role, action: str) -> None:
    """PermissionDenied naming the role, unless ``partner`` has it."""
    if role not in partner.roles:
        raise PermissionDenied(
            f"partner {partner.partner_id} lacks the '{role}' role needed to {action};"
            " ask the exchange operator to grant it"
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and with which credentials."""

    partner: Partner
    credentials: tuple[Credential, ...]


MISSING_CREDENTIALS = (
    "missing 'authorization: Bearer <token>' metadata (or a bound client certificate)"
)


def check_credential(
    found: tuple[Credential, Partner] | None, digest: bytes, what: str, now: float
) -> tuple[Credential, Partner]:
    """``found`` (the store's answer for ``digest``) if it signs a partner in at
    ``now``; Unauthenticated (unknown, revoked, expired) otherwise."""
    if found is None or not hmac.compare_digest(found[0].digest, digest):
        raise Unauthenticated(f"unknown {what}; ask the exchange operator for a new one")
    problem = found[0].problem(now)
    if problem is not None:
        raise Unauthenticated(f"{problem}; ask the exchange operator for a new one")
    return found


def check_enabled(partner: Partner) -> None:
    if partner.disabled:
        raise PermissionDenied(f"partner {partner.partner_id} is disabled")


class RegistryWatch:
    """Polls ``store.registry_version`` so that every open stream of this process
    learns of a registry change (made here, by the CLI or by a replica) within
    ``interval_s``, at the cost of one query per interval for all of them."""

    def __init__(self, store: RegistryStore, interval_s: float = 0.25) -> None:
        self._store = store
        self._interval_s = interval_s
        self._version: int | None = None
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the generation moves (idle streams wake up to
        re-check their caller instead of polling for it)."""
        self._listeners.append(listener)

    def _moved(self) -> None:
        self.generation += 1
        for listener in self._listeners:
            listener()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registry-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def bump(self) -> None:
        """A change made in this process: re-check at once."""
        self._moved()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                version = await self._store.registry_version()
                if version != self._version:
                    self._version = version
                    self._moved()
                if failing:
                    log.info("registry watch: the registry version can be read again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                # Health reports the outage; one line here, not four a second.
                if not failing:
                    log.warning("registry watch: cannot read the registry version: %s", exc)
                failing = True
            except Exception:
                log.warning("registry watch: cannot read the registry version", exc_info=True)
            await asyncio.sleep(self._interval_s)


# Credentials kept in memory at most (a few KB each way; far more than partners).
_KNOWN_CREDENTIALS = 10_000


class Authenticator:
    def __init__(
        self,
        store: RegistryStore,
        watch: RegistryWatch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.watch = watch
        self.clock = clock
        # Credentials found, by (kind, digest), while the registry generation they were
        # read at lasts: a call then needs no query (RegistryWatch notices a change by
        # another process within its interval; one made here bumps it at once).
        # Expiry is checked on every call; unknown credentials are never kept.
        self._known: dict[tuple[CredentialKind, bytes], tuple[Credential, Partner]] = {}
        self._known_generation = -1

    async def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]],
        auth_context: Mapping[str, Iterable[bytes]] | None = None,
    ) -> Caller:
        """The caller of an RPC, from its metadata and TLS peer (``auth_context``
        as gRPC gives it). Unauthenticated or PermissionDenied (disabled) otherwise."""
        token = bearer_token(metadata)
        certificate = _peer_certificate(auth_context)
        found: list[tuple[Credential, Partner]] = []
        if token is not None:
            found.append(await self._lookup(CredentialKind.TOKEN, hash_token(token), "token"))
        if certificate is not None:
            bound = await self._store.credential(CredentialKind.CERTIFICATE, certificate)
            # An unbound certificate only secures the connection; a token must then sign in.
            if bound is not None or token is None:
                found.append(
                    await self._lookup(
                        CredentialKind.CERTIFICATE, certificate, "client certificate", bound
                    )
                )
        if not found:
            raise Unauthenticated(MISSING_CREDENTIALS)
        partner = found[0][1]
        if any(p.partner_id != partner.partner_id for _, p in found):
            raise Unauthenticated(
                "the token and the client certificate belong to different partners"
            )
        PARTNER_ID.set(partner.partner_id)  # for the log lines of this call (exchange.logs)
        check_enabled(partner)
        return Caller(partner, tuple(c for c, _ in found))

    async def _lookup(
        self,
        kind: CredentialKind,
        digest: bytes,
        what: str,
        found: tuple[Credential, Partner] | None = None,
    ) -> tuple[Credential, Partner]:
        found = found or await self._credential(kind, digest)
        return check_credential(found, digest, what, self.clock())

    async def _credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        if self.watch is None:
            return await self._store.credential(kind, digest)
        generation = self.watch.generation
        if generation != self._known_generation:
            self._known.clear()
            self._known_generation = generation
        key = (kind, digest)
        found = self._known.get(key)
        if found is None:
            found = await self._store.credential(kind, digest)
            if found is not None and self.watch.generation == generation:
                if len(self._known) >= _KNOWN_CREDENTIALS:
                    self._known.clear()
                self._known[key] = found
        return found

    async def recheck(self, caller: Caller) -> Caller:
        """The same caller as the registry says now (roles, memberships); raises
        like ``authenticate`` when a credential was revoked or expired, or the
        partner disabled, meanwhile."""
        partner: Partner | None = None
        for credential in caller.credentials:
            _, partner = await self._lookup(
                credential.kind, credential.digest, str(credential.kind)
            )
        assert partner is not None  # a Caller holds at least one credential
        check_enabled(partner)
        return Caller(partner, caller.credentials)

    def access(self, caller: Caller) -> Access:
        return Access(self, caller)


class Access:
    """An open stream's hold on its caller: ``current()`` is cheap while nothing
    changed, and re-checks the credentials when the registry changed or one of
    them reached its expiry."""

    def __init__(self, auth: Authenticator, caller: Caller) -> None:
        self._auth = auth
        self._caller = caller
        self._seen = self._generation()
        expiries = [c.expires_at for c in caller.credentials if c.expires_at is not None]
        self._expires_at = min(expiries, default=None)

    def _generation(self) -> int:
        return self._auth.watch.generation if self._auth.watch is not None else 0

    @property
    def partner(self) -> Partner:
        return self._caller.partner

    async def current(self) -> Partner:
        generation = self._generation()
        expired = self._expires_at is not None and self._auth.clock() >= self._expires_at
        if generation != self._seen or expired:
            self._caller = await self._auth.recheck(self._caller)
            self._seen = generation
        return self._caller.partner


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of the 'authorization: Bearer' metadata, None without one;
    Unauthenticated when the metadata is there but not of that form."""
    header = next((v for k, v in metadata if k == "authorization"), None)
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()


def _peer_certificate(auth_context: Mapping[str, Iterable[bytes]] | None) -> bytes | None:
    """The SHA-256 fingerprint of the client certificate the TLS peer presented."""
    if not auth_context:
        return None
    pems = list(auth_context.get("x509_pem_cert", ()))
    if not pems:
        return None
    try:
        return certificate_fingerprint(pems[0])
    except ValueError:
        return None

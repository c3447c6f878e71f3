"""The partner registry's operations: partners, communities and credentials.

The one place registry input is checked. The Admin gRPC service and the
``exchange partner|community|token`` commands (on a data directory) both go
through ``Registry``, so an operator gets the same answer either way: a
malformed value raises ``InvalidArgument`` saying what was wrong and what is
expected, an unknown partner, community or credential raises ``NotFound``.

``on_change`` is called after every successful change, so that open streams of
this process re-check their callers at once (``auth.RegistryWatch.bump``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterable

from cryptography import x509

from exchange.audit.entries import OPERATOR, Action, Event
from exchange.auth import new_certificate_binding, new_token_credential
from exchange.errors import AlreadyExists, InvalidArgument, NotFound
from exchange.model import (
    DEFAULT_ROLES,
    Community,
    Credential,
    Partner,
    PartnerKind,
    Role,
    Tlp,
)
from exchange.stix import INDUSTRY_SECTORS, parse_tlp
from exchange.store import Store

__all__ = [
    "COMMUNITY_NAME",
    "IDENTITY_ID",
    "MAX_EXPIRY_S",
    "Registry",
    "parse_duration",
]

IDENTITY_ID = re.compile(
    r"^identity--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
# Used in Kafka topic names: keep it to what every broker accepts.
COMMUNITY_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_NAME = 200
MAX_DESCRIPTION = 1000
# Credentials live at most this long (and a larger number would overflow timestamps).
MAX_EXPIRY_S = 100 * 365 * 86400.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_HELP = "expected a number and a unit (s, m, h, d or w), e.g. 90d, 12h, 30m, 2w, 1d12h"
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def parse_duration(text: str) -> float:
    """Seconds in ``90d``, ``12h``, ``30m``, ``2w``, ``45s`` or a sum such as ``1d12h``."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise InvalidArgument(f"invalid duration {text[:40]!r}; {_DURATION_HELP}")
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds <= 0:
        raise InvalidArgument(f"invalid duration {text[:40]!r}: it must be longer than 0 s")
    return seconds


class Registry:
    """Partners, communities and credentials, checked, on top of a ``Store``."""

    def __init__(
        self,
        store: Store,
        on_change: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._clock = clock
        self._actor = OPERATOR

    def acting_as(self, partner_id: str) -> Registry:
        """The same registry, recording ``partner_id`` as the actor of its changes
        (the admin partner calling the AdminService; by default the operator)."""
        view = copy.copy(self)
        view._actor = partner_id
        return view

    async def _changed(self, action: Action, partner: str = "", **detail: str) -> None:
        """After every change: record it in the audit log, tell open streams."""
        event = Event(action, self._actor, self._clock(), partner=partner, detail=detail)
        await self._store.append_audit([event])
        self._on_change()

    # -- partners ---------------------------------------------------------------------

    async def add_partner(
        self,
        name: str,
        *,
        kind: PartnerKind | str = PartnerKind.OTHER,
        sectors: Iterable[str],
        roles: Iterable[Role | str] = DEFAULT_ROLES,
        communities: Iterable[str] = (),
        default_tlp: Tlp | str = Tlp.AMBER,
        identity_id: str | None = None,
    ) -> tuple[Partner, Credential, str]:
        """Register a partner with its first token. Returns the partner, the token's
        credential and the token itself (show it once; only its hash is kept)."""
        clean_name = _name(name)
        identity = _identity(identity_id) if identity_id else f"identity--{uuid.uuid4()}"
        partner = Partner(
            partner_id="",
            name=clean_name,
            identity_id=identity,
            kind=_kind(kind),
            sectors=_sectors(sectors),
            roles=_roles(roles),
            communities=frozenset(_community_names(communities)),
            default_tlp=_tlp(default_tlp),
        )
        known = {c.name for c in await self._store.list_communities()}
        missing = sorted(partner.communities - known)
        if missing:
            raise NotFound(_no_community(missing[0], known))
        taken = await self._store.list_partners()
        owner = next((p for p in taken if p.identity_id == identity), None)
        if owner is not None:
            raise AlreadyExists(
                f"identity {identity} is already registered to partner {owner.partner_id};"
                " give another identity--UUID or none to create a new one"
            )
        ids = {p.partner_id for p in taken}
        partner_id = _partner_id(clean_name)
        while partner_id in ids:
            partner_id = _partner_id(clean_name)
        partner = dataclasses.replace(partner, partner_id=partner_id)
        credential, token = new_token_credential(partner_id, now=self._clock())
        await self._store.add_partner(partner, credential)
        await self._changed(
            Action.PARTNER_ADD,
            partner_id,
            name=partner.name,
            kind=partner.kind.value,
            roles=",".join(sorted(partner.roles)),
            communities=",".join(sorted(partner.communities)),
            credential_id=credential.credential_id,
        )
        return partner, credential, token

    async def get_partner(self, partner_id: str) -> Partner:
        partner = await self._store.get_partner(partner_id)
        if partner is None:
            raise NotFound(_no_partner(partner_id))
        return partner

    async def list_partners(self) -> list[Partner]:
        """Every partner, disabled ones too, oldest first."""
        return await self._store.list_partners()

    async def update_partner(
        self,
        partner_id: str,
        *,
        name: str | None = None,
        kind: PartnerKind | str | None = None,
        sectors: Iterable[str] | None = None,
        roles: Iterable[Role | str] | None = None,
        default_tlp: Tlp | str | None = None,
        disabled: bool | None = None,
    ) -> Partner:
        """Change the given fields (lists are replaced); the rest stays."""
        fields = (name, kind, sectors, roles, default_tlp, disabled)
        if all(value is None for value in fields):
            raise InvalidArgument(
                "nothing to change; expected at least one of name, kind, sectors, roles,"
                " default TLP or disabled"
            )
        new_name = None if name is None else _name(name)
        new_kind = None if kind is None else _kind(kind)
        new_sectors = None if sectors is None else _sectors(sectors)
        new_roles = None if roles is None else _roles(roles)
        new_tlp = None if default_tlp is None else _tlp(default_tlp)
        current = await self.get_partner(partner_id)
        updated = dataclasses.replace(
            current,
            name=current.name if new_name is None else new_name,
            kind=current.kind if new_kind is None else new_kind,
            sectors=current.sectors if new_sectors is None else new_sectors,
            roles=current.roles if new_roles is None else new_roles,
            default_tlp=current.default_tlp if new_tlp is None else new_tlp,
            disabled=current.disabled if disabled is None else bool(disabled),
        )
        await self._store.update_partner(updated)
        changed = {
            field: str(getattr(updated, field))
            for field in ("name", "kind", "default_tlp", "disabled")
            if getattr(updated, field) != getattr(current, field)
        }
        if updated.sectors != current.sectors:
            changed["sectors"] = ",".join(updated.sectors)
        if updated.roles != current.roles:
            changed["roles"] = ",".join(sorted(updated.roles))
        await self._changed(Action.PARTNER_UPDATE, partner_id, **changed)
        return updated

    async def disable_partner(self, partner_id: str) -> Partner:
        """Stop a partner: its calls and open streams fail, it receives nothing."""
        return await self.update_partner(partner_id, disabled=True)

    # -- communities ------------------------------------------------------------------

    async def add_community(self, name: str, description: str = "") -> Community:
        community = Community(name=_community_name(name), description=_description(description))
        await self._store.add_community(community)
        await self._changed(Action.COMMUNITY_ADD, community=community.name)
        return community

    async def list_communities(self) -> list[Community]:
        """Every community with its members, by name."""
        return await self._store.list_communities()

    async def join_community(self, name: str, partner_id: str) -> Community:
        """Make a partner a member (joining twice changes nothing)."""
        name = _community_name(name)
        await self.get_partner(partner_id)
        await self._community(name)
        await self._store.join_community(name, partner_id)
        await self._changed(Action.COMMUNITY_JOIN, partner_id, community=name)
        return await self._community(name)

    async def leave_community(self, name: str, partner_id: str) -> Community:
        name = _community_name(name)
        await self.get_partner(partner_id)
        if partner_id not in (await self._community(name)).members:
            raise NotFound(f"partner {partner_id} is not a member of community '{name}'")
        await self._store.leave_community(name, partner_id)
        await self._changed(Action.COMMUNITY_LEAVE, partner_id, community=name)
        return await self._community(name)

    async def _community(self, name: str) -> Community:
        communities = {c.name: c for c in await self._store.list_communities()}
        if name not in communities:
            raise NotFound(_no_community(name, communities))
        return communities[name]

    # -- credentials ------------------------------------------------------------------

    async def issue_token(
        self, partner_id: str, expires_in_s: float | None = None
    ) -> tuple[Credential, str]:
        """A new token for the partner: its credential and the token (show it once)."""
        expiry = _expiry(expires_in_s)
        await self.get_partner(partner_id)
        credential, token = new_token_credential(partner_id, expires_in_s=expiry, now=self._clock())
        await self._store.add_credential(credential)
        await self._changed(
            Action.CREDENTIAL_ISSUE,
            partner_id,
            credential_id=credential.credential_id,
            kind="token",
        )
        return credential, token

    async def bind_certificate(
        self, partner_id: str, pem: bytes | str, expires_in_s: float | None = None
    ) -> Credential:
        """Let the partner sign in with this TLS client certificate (one PEM certificate)."""
        expiry = _expiry(expires_in_s)
        _check_certificate(pem)
        await self.get_partner(partner_id)
        try:
            credential = new_certificate_binding(
                partner_id, pem, expires_in_s=expiry, now=self._clock()
            )
        except ValueError:
            raise InvalidArgument(_NOT_PEM) from None
        await self._store.add_credential(credential)
        await self._changed(
            Action.CREDENTIAL_ISSUE,
            partner_id,
            credential_id=credential.credential_id,
            kind="certificate",
            fingerprint=credential.digest.hex(),
        )
        return credential

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        """The partner's tokens and certificates, revoked and expired ones too."""
        await self.get_partner(partner_id)
        return await self._store.list_credentials(partner_id)

    async def revoke_credential(self, partner_id: str, credential_id: str) -> Credential:
        """Revoke a token or certificate; calls using it fail from the next one on."""
        await self.get_partner(partner_id)
        if not credential_id.strip():
            raise InvalidArgument("expected a credential id (tok_... or crt_...), got nothing")
        revoked = await self._store.revoke_credential(
            partner_id, credential_id.strip(), self._clock()
        )
        await self._changed(
            Action.CREDENTIAL_REVOKE, partner_id, credential_id=revoked.credential_id
        )
        return revoked


# -- checks -----------------------------------------------------------------------------


def _partner_id(name: str) -> str:
    """A readable, topic-safe id: a slug of the name plus a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "partner"
    return f"{slug}-{uuid.uuid4().hex[:6]}"


def _name(name: str) -> str:
    clean = " ".join(name.split())
    if not clean:
        raise InvalidArgument("partner name must not be empty; expected the organisation's name")
    if len(clean) > MAX_NAME:
        raise InvalidArgument(
            f"partner name is {len(clean)} characters long; expected at most {MAX_NAME}"
        )
    if not clean.isprintable():
        raise InvalidArgument("partner name contains control characters; expected plain text")
    return clean


def _identity(identity_id: str) -> str:
    if not IDENTITY_ID.match(identity_id):
        raise InvalidArgument(
            f"invalid identity id {identity_id[:60]!r}; expected identity--UUID (lower-case hex),"
            " e.g. identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
        )
    return identity_id


def _kind(kind: PartnerKind | str) -> PartnerKind:
    try:
        return PartnerKind(str(kind).strip().lower())
    except ValueError:
        choices = ", ".join(k.value for k in PartnerKind)
        raise InvalidArgument(
            f"unknown partner kind {str(kind)[:40]!r}; expected one of {choices}"
        ) from None


def _sectors(sectors: Iterable[str]) -> tuple[str, ...]:
    words: list[str] = []
    for sector in sectors:
        word = sector.strip().lower()
        if word not in INDUSTRY_SECTORS:
            raise InvalidArgument(
                f"'{sector[:60]}' is not a STIX industry-sector-ov word; expected one of: "
                + ", ".join(sorted(INDUSTRY_SECTORS))
            )
        if word not in words:
            words.append(word)
    if not words:
        raise InvalidArgument(
            "expected at least one sector (a STIX industry-sector-ov word such as non-profit,"
            " technology, government-national or financial-services)"
        )
    return tuple(words)


def _roles(roles: Iterable[Role | str]) -> frozenset[Role]:
    found: set[Role] = set()
    for role in roles:
        try:
            found.add(Role(str(role).strip().lower()))
        except ValueError:
            choices = ", ".join(r.value for r in Role)
            raise InvalidArgument(
                f"unknown role {str(role)[:40]!r}; expected one of {choices}"
            ) from None
    if not found:
        raise InvalidArgument(
            "expected at least one role (submit, subscribe, audit, admin);"
            " to stop a partner, disable it"
        )
    return frozenset(found)


def _tlp(tlp: Tlp | str) -> Tlp:
    if isinstance(tlp, Tlp):
        return tlp
    try:
        return parse_tlp(tlp)
    except ValueError as exc:
        raise InvalidArgument(f"default TLP: {exc}") from None


def _community_name(name: str) -> str:
    if not COMMUNITY_NAME.match(name):
        raise InvalidArgument(
            f"invalid community name {name[:70]!r}; expected 1-63 lower-case letters, digits"
            " and '-', starting and ending with a letter or digit, e.g. sea-taskforce"
        )
    return name


def _community_names(names: Iterable[str]) -> list[str]:
    return [_community_name(n) for n in names]


def _description(description: str) -> str:
    clean = description.strip()
    if len(clean) > MAX_DESCRIPTION:
        raise InvalidArgument(
            f"community description is {len(clean)} characters long;"
            f" expected at most {MAX_DESCRIPTION}"
        )
    return clean


def _expiry(expires_in_s: float | None) -> float | None:
    if expires_in_s is None:
        return None
    if not math.isfinite(expires_in_s) or expires_in_s <= 0:
        raise InvalidArgument(
            f"expiry must be a positive duration; got {expires_in_s!r} s"
            " (leave it unset for a credential that does not expire)"
        )
    if expires_in_s > MAX_EXPIRY_S:
        raise InvalidArgument(
            f"expiry of {expires_in_s:g} s is too long; expected at most 100 years"
            " (leave it unset for a credential that does not expire)"
        )
    return float(expires_in_s)


_NOT_PEM = (
    "not a PEM certificate; expected one client certificate between"
    f" '{_PEM_BEGIN}' and '-----END CERTIFICATE-----'"
)


def _check_certificate(pem: bytes | str) -> None:
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    count = text.count(_PEM_BEGIN)
    if count == 0:
        raise InvalidArgument(_NOT_PEM)
    if count > 1:
        raise InvalidArgument(
            f"the PEM holds {count} certificates; expected exactly one, the partner's"
            " client certificate (not its chain)"
        )
    try:
        der = ssl.PEM_cert_to_DER_cert(text.strip())
    except ValueError:
        raise InvalidArgument(_NOT_PEM) from None
    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidArgument(
            "the PEM block does not hold a DER-encoded certificate; expected an X.509"
            " client certificate"
        ) from None


def _no_partner(partner_id: str) -> str:
    return f"unknown partner {partner_id[:80]!r}; list partners to see their ids"


def _no_community(name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    listed = ", ".join(names) if names else "none yet"
    return f"unknown community '{name}'; create it first (existing communities: {listed})"

"""Protobuf <-> model, in one place: the enum mappings (TLP, partner kind, role),
timestamps, and the registry's messages (partner, community, credential).

Used by the servicers and by the operator CLI when it talks to a server; it
imports no grpc, only the generated messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from exchange_protocol.pb import admin_pb2 as admin_pb
from exchange_protocol.pb import exchange_pb2 as pb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from exchange.errors import InvalidArgument
from exchange.model import Community, Credential, CredentialKind, Partner, PartnerKind, Role, Tlp

__all__ = [
    "KIND_TO_PB",
    "ROLE_TO_PB",
    "TLP_TO_PB",
    "community_from_pb",
    "community_to_pb",
    "credential_from_pb",
    "credential_to_pb",
    "duration_pb",
    "kind_from_pb",
    "partner_from_pb",
    "partner_to_pb",
    "roles_from_pb",
    "seconds_of",
    "timestamp_pb",
    "tlp_from_pb",
]

TLP_TO_PB: Mapping[Tlp, pb.Tlp.ValueType] = {
    Tlp.CLEAR: pb.TLP_CLEAR,
    Tlp.GREEN: pb.TLP_GREEN,
    Tlp.AMBER: pb.TLP_AMBER,
    Tlp.AMBER_STRICT: pb.TLP_AMBER_STRICT,
    Tlp.RED: pb.TLP_RED,
}
KIND_TO_PB: Mapping[PartnerKind, pb.PartnerKind.ValueType] = {
    PartnerKind.NGO: pb.PARTNER_KIND_NGO,
    PartnerKind.TECH: pb.PARTNER_KIND_TECH,
    PartnerKind.GOVERNMENT: pb.PARTNER_KIND_GOVERNMENT,
    PartnerKind.INTERGOVERNMENTAL: pb.PARTNER_KIND_INTERGOVERNMENTAL,
    PartnerKind.OTHER: pb.PARTNER_KIND_OTHER,
}
ROLE_TO_PB: Mapping[Role, admin_pb.Role.ValueType] = {
    Role.SUBMIT: admin_pb.ROLE_SUBMIT,
    Role.SUBSCRIBE: admin_pb.ROLE_SUBSCRIBE,
    Role.AUDIT: admin_pb.ROLE_AUDIT,
    Role.ADMIN: admin_pb.ROLE_ADMIN,
}
_TLP_FROM_PB = {v: k for k, v in TLP_TO_PB.items()}
_KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}
_ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}


def tlp_from_pb(value: int, field: str = "tlp") -> Tlp | None:
    """None for TLP_UNSPECIFIED; InvalidArgument for a number the proto does not define."""
    if value == pb.TLP_UNSPECIFIED:
        return None
    try:
        return _TLP_FROM_PB[pb.Tlp.ValueType(value)]
    except KeyError:
        raise InvalidArgument(
            f"{field}: unknown TLP value {value}; expected TLP_CLEAR, TLP_GREEN, TLP_AMBER,"
            " TLP_AMBER_STRICT or TLP_RED"
        ) from None


def kind_from_pb(value: int, field: str = "kind") -> PartnerKind | None:
    """None for PARTNER_KIND_UNSPECIFIED; InvalidArgument for an unknown number."""
    if value == pb.PARTNER_KIND_UNSPECIFIED:
        return None
    try:
        return _KIND_FROM_PB[pb.PartnerKind.ValueType(value)]
    except KeyError:
        raise InvalidArgument(
            f"{field}: unknown partner kind value {value}; expected one of "
            + ", ".join(pb.PartnerKind.Name(v) for v in KIND_TO_PB.values())
        ) from None


def roles_from_pb(values: Iterable[int], field: str = "roles") -> list[Role]:
    """InvalidArgument for ROLE_UNSPECIFIED or an unknown number in the list."""
    roles: list[Role] = []
    for value in values:
        role = _ROLE_FROM_PB.get(admin_pb.Role.ValueType(value))
        if role is None:
            raise InvalidArgument(
                f"{field}: role value {value} is not a role; expected one of "
                + ", ".join(admin_pb.Role.Name(v) for v in ROLE_TO_PB.values())
            )
        roles.append(role)
    return roles


def timestamp_pb(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def seconds_of(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


def duration_pb(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


# -- registry messages --------------------------------------------------------------------


def partner_to_pb(partner: Partner) -> admin_pb.Partner:
    return admin_pb.Partner(
        partner_id=partner.partner_id,
        name=partner.name,
        identity_id=partner.identity_id,
        kind=KIND_TO_PB[partner.kind],
        sectors=partner.sectors,
        roles=sorted(ROLE_TO_PB[r] for r in partner.roles),
        communities=sorted(partner.communities),
        default_tlp=TLP_TO_PB[partner.default_tlp],
        disabled=partner.disabled,
    )


def partner_from_pb(message: admin_pb.Partner) -> Partner:
    return Partner(
        partner_id=message.partner_id,
        name=message.name,
        identity_id=message.identity_id,
        kind=kind_from_pb(message.kind) or PartnerKind.OTHER,
        sectors=tuple(message.sectors),
        roles=frozenset(roles_from_pb(message.roles)),
        communities=frozenset(message.communities),
        default_tlp=tlp_from_pb(message.default_tlp, "default_tlp") or Tlp.AMBER,
        disabled=message.disabled,
    )


def community_to_pb(community: Community) -> admin_pb.Community:
    return admin_pb.Community(
        name=community.name, description=community.description, members=community.members
    )


def community_from_pb(message: admin_pb.Community) -> Community:
    return Community(
        name=message.name, description=message.description, members=tuple(message.members)
    )


def credential_to_pb(credential: Credential) -> admin_pb.Credential:
    """Never the secret: a token's digest stays inside; a certificate's is its fingerprint."""
    message = admin_pb.Credential(
        credential_id=credential.credential_id,
        partner_id=credential.partner_id,
        kind=credential.kind.value,
        created_at=timestamp_pb(credential.created_at),
    )
    if credential.expires_at is not None:
        message.expires_at.CopyFrom(timestamp_pb(credential.expires_at))
    if credential.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp_pb(credential.revoked_at))
    if credential.kind is CredentialKind.CERTIFICATE:
        message.fingerprint = credential.digest.hex()
    return message


def credential_from_pb(message: admin_pb.Credential) -> Credential:
    """As far as the message tells: a token's digest is not sent, so it is empty here."""
    try:
        kind = CredentialKind(message.kind)
        digest = bytes.fromhex(message.fingerprint)
    except ValueError:
        raise InvalidArgument(
            f"credential {message.credential_id}: unexpected kind {message.kind!r} or fingerprint"
        ) from None
    return Credential(
        credential_id=message.credential_id,
        partner_id=message.partner_id,
        kind=kind,
        digest=digest,
        created_at=seconds_of(message.created_at),
        expires_at=seconds_of(message.expires_at) if message.HasField("expires_at") else None,
        revoked_at=seconds_of(message.revoked_at) if message.HasField("revoked_at") else None,
    )

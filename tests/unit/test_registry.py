"""The registry's checks and operations on a real SQLite store, and parse_duration."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exchange.auth import (
    Authenticator,
    hash_token,
    new_certificate_binding,
    new_token_credential,
)
from exchange.errors import AlreadyExists, InvalidArgument, NotFound
from exchange.model import (
    DEFAULT_ROLES,
    Community,
    CredentialKind,
    Partner,
    PartnerKind,
    Role,
    Tlp,
)
from exchange.registry import IDENTITY_ID, Registry, parse_duration
from exchange.services._convert import (
    KIND_TO_PB,
    ROLE_TO_PB,
    TLP_TO_PB,
    community_from_pb,
    community_to_pb,
    credential_from_pb,
    credential_to_pb,
    kind_from_pb,
    partner_from_pb,
    partner_to_pb,
    roles_from_pb,
    tlp_from_pb,
)
from exchange.store.sqlite import SqliteStore

NOW = 1_767_225_600.0
HARBOR_LIGHT = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "exchange.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def registry(store: SqliteStore, changes: Changes) -> Registry:
    return Registry(store, on_change=changes, clock=lambda: NOW)


def certificate_pem(name: str = "kestrel-client") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- parse_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("12h", 43200),
        ("90d", 90 * 86400),
        ("2w", 14 * 86400),
        ("1d12h", 36 * 3600),
        (" 2H ", 7200),
        ("1.5h", 5400),
        ("1d 6h", 30 * 3600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "  ", "90", "d", "10x", "-5m", "0s", "0d0h", "5 minutes", "1h-", "h1", "1y"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_duration(text)
    assert "e.g. 90d" in caught.value.message or "longer than 0" in caught.value.message


# -- partners -----------------------------------------------------------------------------


async def test_add_partner_defaults(
    registry: Registry, store: SqliteStore, changes: Changes
) -> None:
    partner, credential, token = await registry.add_partner(
        "  Harbor   Light Alliance ", sectors=["non-profit"]
    )
    assert partner.name == "Harbor Light Alliance"
    assert partner.partner_id.startswith("harbor-light-alliance-")
    assert len(partner.partner_id) == len("harbor-light-alliance-") + 6
    assert IDENTITY_ID.match(partner.identity_id)
    assert partner.kind is PartnerKind.OTHER
    assert partner.roles == DEFAULT_ROLES
    assert partner.default_tlp is Tlp.AMBER
    assert not partner.disabled
    assert credential.kind is CredentialKind.TOKEN
    assert credential.partner_id == partner.partner_id
    assert credential.digest == hash_token(token)
    assert credential.created_at == NOW and credential.expires_at is None
    assert changes.count == 1
    assert await registry.get_partner(partner.partner_id) == partner
    assert await registry.list_partners() == [partner]
    # The token signs in as the partner.
    caller = await Authenticator(store).authenticate([("authorization", f"Bearer {token}")])
    assert caller.partner == partner


async def test_add_partner_with_everything(registry: Registry) -> None:
    await registry.add_community("sea-taskforce")
    partner, _, _ = await registry.add_partner(
        "Kestrel Social",
        kind="TECH",
        sectors=["technology", "Communications", "technology"],
        roles=["submit", Role.ADMIN],
        communities=["sea-taskforce"],
        default_tlp="TLP:GREEN",
        identity_id=HARBOR_LIGHT,
    )
    assert partner.kind is PartnerKind.TECH
    assert partner.sectors == ("technology", "communications")
    assert partner.roles == {Role.SUBMIT, Role.ADMIN}
    assert partner.communities == {"sea-taskforce"}
    assert partner.default_tlp is Tlp.GREEN
    assert partner.identity_id == HARBOR_LIGHT
    assert await registry.get_partner(partner.partner_id) == partner
    [community] = await registry.list_communities()
    assert community.members == (partner.partner_id,)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "   "}, "partner name must not be empty"),
        ({"name": "x" * 201}, "at most 200"),
        ({"name": "bad\x00name"}, "control characters"),
        ({"sectors": []}, "at least one sector"),
        ({"sectors": ["shelter"]}, "'shelter' is not a STIX industry-sector-ov word"),
        ({"kind": "charity"}, "unknown partner kind 'charity'; expected one of ngo, tech"),
        ({"roles": []}, "at least one role"),
        ({"roles": ["owner"]}, "unknown role 'owner'; expected one of submit"),
        ({"default_tlp": "purple"}, "unknown TLP level 'purple'"),
        ({"identity_id": "identity--nope"}, "expected identity--UUID"),
        ({"identity_id": HARBOR_LIGHT.upper()}, "expected identity--UUID (lower-case hex)"),
        ({"communities": ["Sea Taskforce"]}, "invalid community name"),
    ],
)
async def test_add_partner_refuses(
    registry: Registry, changes: Changes, fields: dict[str, object], expected: str
) -> None:
    args: dict[str, object] = {"name": "Harbor Light", "sectors": ["non-profit"], **fields}
    with pytest.raises(InvalidArgument) as caught:
        await registry.add_partner(**args)  # type: ignore[arg-type]
    assert expected in caught.value.message
    assert await registry.list_partners() == []
    assert changes.count == 0


async def test_add_partner_unknown_community_and_taken_identity(registry: Registry) -> None:
    await registry.add_community("gulf-ngos")
    with pytest.raises(NotFound, match=r"unknown community 'sea-taskforce'.*gulf-ngos"):
        await registry.add_partner("A", sectors=["non-profit"], communities=["sea-taskforce"])
    first, _, _ = await registry.add_partner("A", sectors=["non-profit"], identity_id=HARBOR_LIGHT)
    with pytest.raises(AlreadyExists, match=f"registered to partner {first.partner_id}"):
        await registry.add_partner("B", sectors=["non-profit"], identity_id=HARBOR_LIGHT)
    # The same name twice gets two ids.
    second, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    assert second.partner_id != first.partner_id
    assert second.partner_id.startswith("a-")


async def test_partner_id_slug_of_an_unreadable_name(registry: Registry) -> None:
    partner, _, _ = await registry.add_partner("中文 ★", sectors=["non-profit"])
    assert partner.partner_id.startswith("partner-")


async def test_update_partner(registry: Registry, changes: Changes) -> None:
    partner, _, _ = await registry.add_partner("Kestrel", sectors=["technology"])
    updated = await registry.update_partner(
        partner.partner_id,
        name="Kestrel Social",
        kind=PartnerKind.TECH,
        sectors=["technology", "communications"],
        roles=[Role.SUBMIT, Role.SUBSCRIBE, Role.AUDIT],
        default_tlp=Tlp.GREEN,
    )
    assert updated.partner_id == partner.partner_id
    assert updated.identity_id == partner.identity_id
    assert updated.name == "Kestrel Social"
    assert updated.kind is PartnerKind.TECH
    assert updated.sectors == ("technology", "communications")
    assert updated.roles == {Role.SUBMIT, Role.SUBSCRIBE, Role.AUDIT}
    assert updated.default_tlp is Tlp.GREEN
    assert await registry.get_partner(partner.partner_id) == updated
    assert changes.count == 2

    disabled = await registry.disable_partner(partner.partner_id)
    assert disabled.disabled and disabled.name == "Kestrel Social"
    assert (await registry.get_partner(partner.partner_id)).disabled
    enabled = await registry.update_partner(partner.partner_id, disabled=False)
    assert not enabled.disabled
    assert changes.count == 4


async def test_update_partner_refuses(registry: Registry, changes: Changes) -> None:
    partner, _, _ = await registry.add_partner("Kestrel", sectors=["technology"])
    with pytest.raises(InvalidArgument, match="nothing to change"):
        await registry.update_partner(partner.partner_id)
    with pytest.raises(InvalidArgument, match="at least one sector"):
        await registry.update_partner(partner.partner_id, sectors=[])
    with pytest.raises(InvalidArgument, match="at least one role"):
        await registry.update_partner(partner.partner_id, roles=[])
    with pytest.raises(NotFound, match="unknown partner 'nobody-123456'"):
        await registry.update_partner("nobody-123456", name="x")
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.get_partner("nobody-123456")
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.disable_partner("nobody-123456")
    assert await registry.get_partner(partner.partner_id) == partner
    assert changes.count == 1


# -- communities --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "7", "sea-taskforce", "gulf-ngos-2", "a" * 63, "a--b"])
async def test_community_names(registry: Registry, name: str) -> None:
    community = await registry.add_community(name, "  for testing ")
    assert community.name == name and community.description == "for testing"
    assert [c.name for c in await registry.list_communities()] == [name]


@pytest.mark.parametrize(
    "name", ["", "Sea", "-sea", "sea-", "sea_taskforce", "sea taskforce", "a" * 64, "sea.tf", "é"]
)
async def test_community_names_refused(registry: Registry, changes: Changes, name: str) -> None:
    with pytest.raises(InvalidArgument, match="expected 1-63 lower-case letters, digits and '-'"):
        await registry.add_community(name)
    assert changes.count == 0


async def test_community_description_limit(registry: Registry) -> None:
    with pytest.raises(InvalidArgument, match="at most 1000"):
        await registry.add_community("sea-taskforce", "x" * 1001)


async def test_join_and_leave(registry: Registry, changes: Changes) -> None:
    await registry.add_community("sea-taskforce", "South-East Asia")
    with pytest.raises(AlreadyExists):
        await registry.add_community("sea-taskforce")
    a, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    b, _, _ = await registry.add_partner("B", sectors=["technology"])
    changes.count = 0

    joined = await registry.join_community("sea-taskforce", b.partner_id)
    assert joined.members == (b.partner_id,)
    joined = await registry.join_community("sea-taskforce", a.partner_id)
    assert joined.members == tuple(sorted([a.partner_id, b.partner_id]))
    assert joined.description == "South-East Asia"
    # Joining twice changes nothing.
    assert (await registry.join_community("sea-taskforce", a.partner_id)).members == joined.members
    assert (await registry.get_partner(a.partner_id)).communities == {"sea-taskforce"}

    left = await registry.leave_community("sea-taskforce", a.partner_id)
    assert left.members == (b.partner_id,)
    assert (await registry.get_partner(a.partner_id)).communities == frozenset()
    assert changes.count == 4

    with pytest.raises(NotFound, match=f"partner {a.partner_id} is not a member"):
        await registry.leave_community("sea-taskforce", a.partner_id)
    with pytest.raises(NotFound, match=r"unknown community 'gulf-ngos'.*sea-taskforce"):
        await registry.join_community("gulf-ngos", a.partner_id)
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.join_community("sea-taskforce", "nobody-123456")
    with pytest.raises(InvalidArgument, match="invalid community name"):
        await registry.leave_community("Sea", a.partner_id)
    assert changes.count == 4


# -- credentials --------------------------------------------------------------------------


async def test_tokens(registry: Registry, store: SqliteStore, changes: Changes) -> None:
    partner, first, first_token = await registry.add_partner("A", sectors=["non-profit"])
    changes.count = 0
    second, second_token = await registry.issue_token(partner.partner_id, 90 * 86400)
    assert second.expires_at == NOW + 90 * 86400
    assert second.digest == hash_token(second_token) and second_token != first_token
    listed = await registry.list_credentials(partner.partner_id)
    assert [c.credential_id for c in listed] == [first.credential_id, second.credential_id]

    revoked = await registry.revoke_credential(partner.partner_id, first.credential_id)
    assert revoked.credential_id == first.credential_id and revoked.revoked_at == NOW
    assert changes.count == 2
    auth = Authenticator(store, clock=lambda: NOW)
    with pytest.raises(Exception, match="revoked"):
        await auth.authenticate([("authorization", f"Bearer {first_token}")])
    assert (await auth.authenticate([("authorization", f"Bearer {second_token}")])).partner == (
        partner
    )


async def test_token_refusals(registry: Registry, changes: Changes) -> None:
    partner, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    _, other, _ = await registry.add_partner("B", sectors=["non-profit"])
    changes.count = 0
    for bad in (0.0, -5.0, float("inf"), float("nan")):
        with pytest.raises(InvalidArgument, match="positive duration"):
            await registry.issue_token(partner.partner_id, bad)
    with pytest.raises(InvalidArgument, match="at most 100 years"):
        await registry.issue_token(partner.partner_id, 200 * 365 * 86400.0)
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.issue_token("nobody-123456")
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.list_credentials("nobody-123456")
    with pytest.raises(NotFound):
        await registry.revoke_credential(partner.partner_id, "tok_0000000000")
    # A credential of another partner is not found under this one.
    with pytest.raises(NotFound):
        await registry.revoke_credential(partner.partner_id, other.credential_id)
    with pytest.raises(InvalidArgument, match="expected a credential id"):
        await registry.revoke_credential(partner.partner_id, " ")
    assert changes.count == 0


async def test_bind_certificate(registry: Registry, changes: Changes) -> None:
    partner, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    changes.count = 0
    pem = certificate_pem()
    bound = await registry.bind_certificate(partner.partner_id, pem, 3600)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert bound.kind is CredentialKind.CERTIFICATE
    assert bound.digest == hashlib.sha256(der).digest()
    assert bound.expires_at == NOW + 3600
    assert changes.count == 1
    assert bound in await registry.list_credentials(partner.partner_id)
    with pytest.raises(AlreadyExists):
        await registry.bind_certificate(partner.partner_id, pem)


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        (b"", "not a PEM certificate"),
        (b"hello", "not a PEM certificate"),
        (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "not a PEM certificate",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "does not hold a DER-encoded certificate",
        ),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "not a PEM certificate"),
        # One well-formed DER SEQUENCE (of the INTEGER 1) that is no certificate.
        (
            b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
            "does not hold a DER-encoded certificate",
        ),
    ],
)
async def test_bind_certificate_refuses(
    registry: Registry, changes: Changes, pem: bytes, expected: str
) -> None:
    partner, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    with pytest.raises(InvalidArgument, match=expected):
        await registry.bind_certificate(partner.partner_id, pem)
    assert changes.count == 1


async def test_bind_certificate_refuses_a_chain(registry: Registry) -> None:
    partner, _, _ = await registry.add_partner("A", sectors=["non-profit"])
    with pytest.raises(InvalidArgument, match="holds 2 certificates; expected exactly one"):
        await registry.bind_certificate(partner.partner_id, certificate_pem() + certificate_pem())
    with pytest.raises(NotFound, match="unknown partner"):
        await registry.bind_certificate("nobody-123456", certificate_pem())


# -- the protobuf mapping the Admin service and the remote CLI share ----------------------


def test_protobuf_mapping_round_trips() -> None:
    partner = Partner(
        partner_id="kestrel-social-1a2b3c",
        name="Kestrel Social",
        identity_id=HARBOR_LIGHT,
        kind=PartnerKind.INTERGOVERNMENTAL,
        sectors=("technology", "communications"),
        roles=frozenset(Role),
        communities=frozenset({"sea-taskforce", "gulf-ngos"}),
        default_tlp=Tlp.AMBER_STRICT,
        disabled=True,
    )
    assert partner_from_pb(partner_to_pb(partner)) == partner
    for kind in PartnerKind:
        assert kind_from_pb(KIND_TO_PB[kind]) is kind
    for tlp in Tlp:
        assert tlp_from_pb(TLP_TO_PB[tlp]) is tlp
    assert roles_from_pb(ROLE_TO_PB[r] for r in Role) == list(Role)
    assert kind_from_pb(0) is None and tlp_from_pb(0) is None
    with pytest.raises(InvalidArgument, match="ROLE_ADMIN"):
        roles_from_pb([0])
    with pytest.raises(InvalidArgument, match="unknown TLP value 99"):
        tlp_from_pb(99)
    with pytest.raises(InvalidArgument, match="unknown partner kind value 42"):
        kind_from_pb(42)

    community = Community("sea-taskforce", "SEA", ("a-1", "b-2"))
    assert community_from_pb(community_to_pb(community)) == community


def test_credentials_leave_no_token_digest_in_protobuf() -> None:
    token, _ = new_token_credential("a-1", expires_in_s=60, now=NOW)
    message = credential_to_pb(token)
    assert message.fingerprint == "" and token.digest not in message.SerializeToString()
    back = credential_from_pb(message)
    assert (back.credential_id, back.kind, back.created_at, back.expires_at) == (
        token.credential_id,
        CredentialKind.TOKEN,
        NOW,
        NOW + 60,
    )
    assert back.revoked_at is None
    certificate = new_certificate_binding("a-1", certificate_pem(), now=NOW)
    revoked = replace(certificate, revoked_at=NOW + 1)
    assert credential_from_pb(credential_to_pb(revoked)) == revoked

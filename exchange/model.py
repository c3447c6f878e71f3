"""Domain types shared by the pipeline stages: partners, communities, credentials,
TLP and audiences, validated objects, outcomes."""

from __future__ import annotations

import builtins
import enum
import hashlib
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import orjson

__all__ = [
    "DEFAULT_ROLES",
    "Audience",
    "AudienceRequest",
    "Community",
    "Credential",
    "CredentialKind",
    "EraseReason",
    "ErasedVersion",
    "Erasure",
    "ObjectOutcome",
    "ObjectResult",
    "Partner",
    "PartnerKind",
    "Problem",
    "Receipt",
    "Rejection",
    "Role",
    "StoredObject",
    "Tlp",
    "ValidObject",
    "version_key",
]


class Tlp(enum.StrEnum):
    """Traffic Light Protocol 2.0 levels (TLP 1.0 WHITE is read as CLEAR)."""

    CLEAR = "clear"
    GREEN = "green"
    AMBER = "amber"
    AMBER_STRICT = "amber+strict"
    RED = "red"


# From least to most restrictive: widening an audience moves towards the front.
TLP_ORDER = (Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED)


class PartnerKind(enum.StrEnum):
    """What kind of organisation a partner is (a submitter may exclude kinds)."""

    NGO = "ngo"
    TECH = "tech"
    GOVERNMENT = "government"
    INTERGOVERNMENTAL = "intergovernmental"
    OTHER = "other"


class Role(enum.StrEnum):
    """What a partner may do; each RPC needs one."""

    SUBMIT = "submit"
    SUBSCRIBE = "subscribe"
    AUDIT = "audit"
    ADMIN = "admin"


DEFAULT_ROLES = frozenset({Role.SUBMIT, Role.SUBSCRIBE})


@dataclass(frozen=True, slots=True)
class Partner:
    """An organisation that submits to and receives from the exchange."""

    partner_id: str
    name: str
    identity_id: str
    kind: PartnerKind = PartnerKind.OTHER
    sectors: tuple[str, ...] = ()
    roles: frozenset[Role] = DEFAULT_ROLES
    # Names of the communities it is a member of.
    communities: frozenset[str] = frozenset()
    default_tlp: Tlp = Tlp.AMBER
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Community:
    """A named group of partners that AMBER objects can be shared with."""

    name: str
    description: str = ""
    # Partner ids, sorted (filled in listings).
    members: tuple[str, ...] = ()


class CredentialKind(enum.StrEnum):
    TOKEN = "token"  # noqa: S105 (a kind, not a secret)
    CERTIFICATE = "certificate"


@dataclass(frozen=True, slots=True)
class Credential:
    """A token or bound client certificate of a partner; never the secret itself.

    ``digest`` is the SHA-256 of the token, or of the certificate (DER): its
    fingerprint. ``credential_id`` names it in listings and revocations."""

    credential_id: str
    partner_id: str
    kind: CredentialKind
    digest: bytes
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def problem(self, now: float) -> str | None:
        """Why this credential cannot be used at ``now`` (None: it can)."""
        if self.revoked_at is not None:
            return f"{self.kind} {self.credential_id} was revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return f"{self.kind} {self.credential_id} has expired"
        return None


@dataclass(frozen=True, slots=True)
class AudienceRequest:
    """Who a submission names, beyond its objects' TLP."""

    communities: frozenset[str] = frozenset()
    recipients: frozenset[str] = frozenset()  # partner ids
    excluded_kinds: frozenset[PartnerKind] = frozenset()


@dataclass(frozen=True, slots=True)
class Audience:
    """Who an object version is for, fixed when it was accepted (``policy`` builds
    it and decides with it). ``tlp`` is the level that routes the object: the
    least restrictive of its versions, since an audience never narrows."""

    tlp: Tlp
    submitter: str  # partner id
    communities: frozenset[str] = frozenset()
    recipients: frozenset[str] = frozenset()
    excluded_kinds: frozenset[PartnerKind] = frozenset()
    # Partners it goes to because of what it refers to, not because the submitter
    # named them (the creator of the indicator a sighting is of). Never shown to the
    # submitter: who they are would tell it who holds the object it referred to.
    implied: frozenset[str] = frozenset()

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "tlp": self.tlp.value,
            "submitter": self.submitter,
            "communities": sorted(self.communities),
            "recipients": sorted(self.recipients),
            "excluded_kinds": sorted(self.excluded_kinds),
        }
        if self.implied:
            doc["implied"] = sorted(self.implied)
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Audience:
        """Raises ValueError (or KeyError) for anything ``to_json`` did not write."""
        doc = orjson.loads(raw)
        return cls(
            tlp=Tlp(doc["tlp"]),
            submitter=str(doc["submitter"]),
            communities=frozenset(map(str, doc["communities"])),
            recipients=frozenset(map(str, doc["recipients"])),
            excluded_kinds=frozenset(map(PartnerKind, doc["excluded_kinds"])),
            implied=frozenset(map(str, doc.get("implied", ()))),
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a refused object: the property at fault ("" for the
    object as a whole) and what was expected instead."""

    property: str
    expected: str

    @builtins.property  # the field `property` shadows the builtin in this class body
    def message(self) -> str:
        where = f"property '{self.property}'" if self.property else "object"
        return f"{where}: {self.expected}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one object of a bundle was refused.

    ``property`` and ``expected`` are the first problem found; ``problems`` lists
    every one reported (the first among them), ``more_problems`` counts those left
    out to keep the answer short. A rejection made with one reason leaves both empty.
    """

    object_id: str
    property: str
    expected: str
    index: int = 0
    version: str = ""
    # The setting whose limit the object went past, if that is why (for metrics).
    limit: str = ""
    problems: tuple[Problem, ...] = ()
    more_problems: int = 0

    @builtins.property
    def all_problems(self) -> tuple[Problem, ...]:
        """The problems reported: ``problems``, or the one reason."""
        return self.problems or (Problem(self.property, self.expected),)

    @builtins.property
    def message(self) -> str:
        """One line naming every problem reported (one reads as it always has)."""
        listed = self.all_problems
        if len(listed) == 1 and not self.more_problems:
            return f"{self.object_id}: {listed[0].message}"
        count = len(listed) + self.more_problems
        text = "; ".join(f"{n}) {p.message}" for n, p in enumerate(listed, 1))
        more = f"; ... and {self.more_problems} more" if self.more_problems else ""
        return f"{self.object_id}: {count} problems: {text}{more}"


@dataclass(frozen=True, slots=True)
class ValidObject:
    """A STIX object that passed validation, stamped with provenance and TLP.

    ``body`` is the object as it will be stored and delivered (compact JSON);
    the other fields are what routing, filtering and the store need without
    parsing it again.
    """

    object_id: str
    object_type: str
    version: str
    created_by_ref: str
    tlp: Tlp
    body: bytes
    index: int = 0
    labels: tuple[str, ...] = ()
    revoked: bool = False
    spec_version: str = "2.1"
    # For a sighting: the id it is a sighting of (``sighting_of_ref``).
    refers_to: str = ""

    def __reduce__(self) -> tuple[type[ValidObject], tuple[object, ...]]:
        # Validation workers send thousands back per bundle: pickled as the
        # constructor's arguments, it loads in about half the time of the default.
        return ValidObject, tuple(getattr(self, f) for f in _VALID_OBJECT_FIELDS)


_VALID_OBJECT_FIELDS = tuple(f.name for f in fields(ValidObject))


class ObjectOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Receipt(NamedTuple):
    """Where an accepted object's audit entry sits in the log: proof of record."""

    log_index: int
    leaf_hash: bytes
    entry: bytes  # the entry's canonical bytes


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """The answer for one object of a submitted bundle."""

    index: int
    object_id: str
    version: str
    outcome: ObjectOutcome
    rejection: Rejection | None = None
    # For an accepted object: something the submitter should know (e.g. a kept audience).
    notice: str = ""
    # For an accepted object: its audit entry.
    receipt: Receipt | None = None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One accepted object version as held by the store, with its exchange metadata."""

    seq: int
    submitter: str
    accepted_at: float
    obj: ValidObject
    # Who it is for (fixed at acceptance; see policy).
    audience: Audience
    # The bus topics it was routed to, in routing order (set when read from the bus).
    topics: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    # Its delivery's protobuf bytes but the body and the per-stream cursor (key and length
    # of the body, the other fields, the length of all: exchange.services._deliveries):
    # built on its first delivery and shared by every stream that sends it. A cache, not
    # part of its value.
    delivery_fields: tuple[bytes, bytes, int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # SHA-256 (hex) of its body, for the audit entries of its deliveries: computed on its
    # first delivery, shared like delivery_fields.
    body_sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    def keep_delivery_fields(self, encoded: tuple[bytes, bytes, int]) -> None:
        # Frozen for its value; the cache is filled once, by whichever stream comes first.
        object.__setattr__(self, "delivery_fields", encoded)

    def body_digest(self) -> str:
        """SHA-256 (hex) of the body, computed once per record."""
        digest = self.body_sha256
        if digest is None:
            digest = hashlib.sha256(self.obj.body).hexdigest()
            object.__setattr__(self, "body_sha256", digest)
        return digest


class EraseReason(enum.StrEnum):
    """Why an object was erased: a code, never free text (it is kept in the audit log
    and sent to every recipient, so it must not be able to carry what was erased)."""

    # The object describes a victim (a number that turned out to be one's, say).
    VICTIM_DATA = "victim-data"
    # It could identify an informant or a witness.
    INFORMANT_DATA = "informant-data"
    # It was wrong (a false lead).
    INACCURATE = "inaccurate"
    # A court or a prosecutor ordered it.
    COURT_ORDER = "court-order"
    # A data subject asked for it (GDPR art. 17).
    DATA_SUBJECT_REQUEST = "data-subject-request"
    # It reached the maximum age the settings keep (retention).
    RETENTION = "retention"
    # Its ``valid_until`` passed (retention).
    EXPIRED = "expired"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class ErasedVersion:
    """One erased version: which, who it was for, and the SHA-256 of the erased body
    (what its audit entries named: they still verify, the body is gone)."""

    version: str
    audience: Audience
    digest: str


@dataclass(frozen=True, slots=True)
class Erasure:
    """The erasure of one copy of an object: every version of an SDO or SRO (its one
    copy, its creator's), or of one partner's copy of an observable. What the relay
    publishes as tombstones and subscribers receive as a notice; holds no content."""

    erasure_id: int  # in erasure order, per store
    object_id: str
    object_type: str
    submitter: str  # the partner whose copy was erased
    created_by_ref: str
    versions: tuple[ErasedVersion, ...]  # oldest first
    reason: EraseReason
    erased_by: str  # the partner id, or "operator"
    erased_at: float
    # Objects (their latest versions, with their audiences) that referred to it when it
    # was erased: sightings of it, relationships to or from it. Each recipient is told
    # of those it may see.
    referenced_by: tuple[tuple[str, Audience], ...] = ()
    # Where its ERASE entry sits in the audit log (-1: not recorded yet).
    audit_index: int = -1


def version_key(version: str) -> str:
    """A comparable, canonical form of a STIX timestamp, so that ``...00Z`` and
    ``...00.000Z`` name the same version. Non-timestamps (an SCO's empty version)
    are returned unchanged."""
    if len(version) < 20 or not version.endswith("Z"):
        return version
    whole, _, fraction = version[:-1].partition(".")
    return f"{whole}.{fraction.ljust(9, '0')[:9]}Z"

"""Domain types shared by the pipeline stages: partners, TLP, validated objects, outcomes."""

from __future__ import annotations

import builtins
import enum
from dataclasses import dataclass, field

__all__ = [
    "ObjectOutcome",
    "ObjectResult",
    "Partner",
    "Rejection",
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


@dataclass(frozen=True, slots=True)
class Partner:
    """An organisation that submits to and receives from the exchange."""

    partner_id: str
    name: str
    sector: str
    identity_id: str
    default_tlp: Tlp = Tlp.AMBER
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one object of a bundle was refused."""

    object_id: str
    property: str
    expected: str
    index: int = 0
    version: str = ""

    @builtins.property  # the field `property` shadows the builtin in this class body
    def message(self) -> str:
        where = f"property '{self.property}'" if self.property else "object"
        return f"{self.object_id}: {where}: {self.expected}"


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


class ObjectOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """The answer for one object of a submitted bundle."""

    index: int
    object_id: str
    version: str
    outcome: ObjectOutcome
    rejection: Rejection | None = None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One accepted object version as held by the store, with its exchange metadata."""

    seq: int
    submitter: str
    accepted_at: float
    obj: ValidObject
    extra: dict[str, str] = field(default_factory=dict)


def version_key(version: str) -> str:
    """A comparable, canonical form of a STIX timestamp, so that ``...00Z`` and
    ``...00.000Z`` name the same version. Non-timestamps (an SCO's empty version)
    are returned unchanged."""
    if len(version) < 20 or not version.endswith("Z"):
        return version
    whole, _, fraction = version[:-1].partition(".")
    return f"{whole}.{fraction.ljust(9, '0')[:9]}Z"

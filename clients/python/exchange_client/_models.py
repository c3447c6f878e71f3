"""What the SDK returns: plain Python values built from the protobuf messages."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, cast

from exchange_client._pb import exchange_pb2 as pb

__all__ = ["Delivery", "ObjectResult", "PartnerKind", "RejectedObject", "SubmitResult"]

OutcomeName = Literal["accepted", "duplicate", "rejected", "unspecified"]
TlpName = Literal["clear", "green", "amber", "amber+strict", "red", "unspecified"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_OUTCOMES: dict[int, OutcomeName] = {
    pb.OUTCOME_ACCEPTED: "accepted",
    pb.OUTCOME_DUPLICATE: "duplicate",
    pb.OUTCOME_REJECTED: "rejected",
}

_TLPS: dict[int, TlpName] = {
    pb.TLP_CLEAR: "clear",
    pb.TLP_GREEN: "green",
    pb.TLP_AMBER: "amber",
    pb.TLP_AMBER_STRICT: "amber+strict",
    pb.TLP_RED: "red",
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


class PartnerKind(enum.StrEnum):
    """The kind of organisation a partner is; a submission may exclude kinds.

    Each member is also its plain string (``PartnerKind.NGO == "ngo"``), so
    ``exclude_kinds=["government"]`` and ``exclude_kinds=[PartnerKind.GOVERNMENT]``
    mean the same.
    """

    NGO = "ngo"
    TECH = "tech"
    GOVERNMENT = "government"
    INTERGOVERNMENTAL = "intergovernmental"
    OTHER = "other"


_PARTNER_KINDS: dict[PartnerKind, pb.PartnerKind.ValueType] = {
    PartnerKind.NGO: pb.PARTNER_KIND_NGO,
    PartnerKind.TECH: pb.PARTNER_KIND_TECH,
    PartnerKind.GOVERNMENT: pb.PARTNER_KIND_GOVERNMENT,
    PartnerKind.INTERGOVERNMENTAL: pb.PARTNER_KIND_INTERGOVERNMENTAL,
    PartnerKind.OTHER: pb.PARTNER_KIND_OTHER,
}


def _names(values: Iterable[str] | str | None, what: str) -> list[str]:
    """Community names or partner ids: one string or many; blanks refused, repeats dropped."""
    if values is None:
        return []
    if isinstance(values, bytes | bytearray):
        raise TypeError(f"{what} must be str or an iterable of str, not bytes")
    items = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must be str, not {type(item).__name__}: {item!r}")
        name = item.strip()
        if not name:
            raise ValueError(f"{what} must not be empty")
        if name not in names:
            names.append(name)
    return names


def _partner_kinds(values: Iterable[str] | str | None) -> list[pb.PartnerKind.ValueType]:
    """``exclude_kinds`` as protobuf enum values; an unknown kind raises ``ValueError``."""
    kinds: list[pb.PartnerKind.ValueType] = []
    for name in _names(values, "exclude_kinds"):
        try:
            kind = _PARTNER_KINDS[PartnerKind(name.lower())]
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in PartnerKind)
            raise ValueError(
                f"unknown partner kind {name!r} in exclude_kinds: expected one of {allowed}"
            ) from None
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _audience(
    communities: Iterable[str] | str | None,
    recipients: Iterable[str] | str | None,
    exclude_kinds: Iterable[str] | str | None,
) -> pb.Audience | None:
    """The ``Audience`` of a submission, or ``None`` when nothing narrows it (TLP alone decides).

    Raises ``ValueError`` (unknown kind, blank name) or ``TypeError`` before any call.
    """
    audience = pb.Audience(
        communities=_names(communities, "communities"),
        recipients=_names(recipients, "recipients"),
        exclude_kinds=_partner_kinds(exclude_kinds),
    )
    if not (audience.communities or audience.recipients or audience.exclude_kinds):
        return None
    return audience


@dataclass(frozen=True, slots=True)
class RejectedObject:
    """An object of a submitted bundle that the exchange refused; nothing of it was stored."""

    object_id: str
    """The object's STIX id, or ``objects[N]`` when it has no usable id."""
    reason: str
    """One line a person can act on (the exchange's own wording)."""
    property: str
    """The offending property (e.g. ``confidence``), or ``""`` when the whole object is at fault."""
    expected: str
    """What was expected instead, in words."""
    index: int
    """Position of the object in the submitted bundle."""
    version: str
    """The object's ``modified`` (or ``created``) timestamp, as sent."""


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """The outcome of one object of a submitted bundle."""

    object_id: str
    version: str
    outcome: OutcomeName
    """``"accepted"``, ``"duplicate"`` or ``"rejected"``."""
    index: int
    rejection: RejectedObject | None = None
    """Why the object was refused; set only when ``outcome == "rejected"``."""
    notice: str = ""
    """Something the submitter should know about an accepted object (one line), e.g.
    that it keeps the wider audience of its earlier versions; ``""`` when none."""

    @classmethod
    def _from_pb(cls, message: pb.ObjectResult) -> ObjectResult:
        outcome = _OUTCOMES.get(message.outcome, "unspecified")
        rejection = None
        if outcome == "rejected":
            detail = message.rejection
            reason = _one_line(detail.message)
            if not reason:
                parts = [message.object_id or f"objects[{message.index}]"]
                if detail.property:
                    parts.append(detail.property)
                parts.append(f"expected {detail.expected}" if detail.expected else "rejected")
                reason = ": ".join(parts)
            rejection = RejectedObject(
                object_id=message.object_id,
                reason=reason,
                property=detail.property,
                expected=detail.expected,
                index=message.index,
                version=message.version,
            )
        return cls(
            object_id=message.object_id,
            version=message.version,
            outcome=outcome,
            index=message.index,
            rejection=rejection,
            notice=_one_line(message.notice),
        )


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the exchange did with each object of one submitted bundle."""

    accepted: list[str]
    """Ids of the objects stored and queued for delivery."""
    duplicates: list[str]
    """Ids of the objects whose id and version the exchange already held (nothing changed)."""
    rejected: list[RejectedObject]
    """The objects refused, each with the reason."""
    results: list[ObjectResult]
    """Every object's outcome, in bundle order."""
    error: str | None = None
    """Why the bundle as a whole was refused, when it was (then no object has a result).

    Only :meth:`ExchangeClient.submit_stream` reports a refused bundle this way
    (the stream goes on with the next one); :meth:`ExchangeClient.submit`
    raises :class:`ValidationError` instead.
    """

    @property
    def ok(self) -> bool:
        """True when no object was rejected and the bundle was not refused."""
        return not self.rejected and self.error is None

    @classmethod
    def _from_pb(cls, message: pb.SubmitResponse, error: str = "") -> SubmitResult:
        results = [ObjectResult._from_pb(r) for r in message.results]
        return cls(
            accepted=[r.object_id for r in results if r.outcome == "accepted"],
            duplicates=[r.object_id for r in results if r.outcome == "duplicate"],
            rejected=[r.rejection for r in results if r.rejection is not None],
            results=results,
            error=_one_line(error) or None,
        )


@dataclass(frozen=True)
class Delivery:
    """One STIX object delivered by a subscription.

    ``object_json`` is the object exactly as the exchange stored it; ``object``
    is the same, decoded (lazily, on first access) into a dict.
    """

    object_json: bytes = field(repr=False)
    object_id: str
    object_type: str
    version: str
    """The object's ``modified`` (or ``created``) timestamp."""
    submitter: str
    """The partner id of the submitter."""
    submitter_identity: str
    """The STIX identity of the submitter (the object's ``created_by_ref``)."""
    tlp: TlpName
    """``"clear"``, ``"green"``, ``"amber"``, ``"amber+strict"`` or ``"red"``."""
    accepted_at: datetime
    """When the exchange accepted the object (timezone-aware, UTC)."""
    cursor: str
    """Resume position right after this delivery."""

    @classmethod
    def _from_pb(cls, message: pb.Delivery) -> Delivery:
        stamp = message.accepted_at
        accepted_at = _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
        return cls(
            object_json=message.object,
            object_id=message.object_id,
            object_type=message.object_type,
            version=message.version,
            submitter=message.submitter,
            submitter_identity=message.submitter_identity,
            tlp=_TLPS.get(message.tlp, "unspecified"),
            accepted_at=accepted_at,
            cursor=message.cursor,
        )

    # Defined last: inside the class body the name shadows the builtin ``object``.
    @cached_property
    def object(self) -> dict[str, Any]:
        """The STIX object as a dict (decoded from ``object_json`` on first access)."""
        return cast(dict[str, Any], json.loads(self.object_json))

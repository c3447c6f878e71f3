"""What the SDK returns: plain Python values built from the protobuf messages."""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

from exchange_protocol.checkpoint import Checkpoint, CheckpointError
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import exchange_pb2 as pb

from exchange_client._errors import ExchangeError
from exchange_client._rejections import Problem, RejectedObject

__all__ = [
    "AuditEntry",
    "AuditedVersion",
    "BatchError",
    "Delivery",
    "InclusionProof",
    "ObjectResult",
    "PartnerKind",
    "Problem",
    "Receipt",
    "RejectedObject",
    "SubmitProgress",
    "SubmitResult",
    "SubmitSummary",
    "VerifyResult",
]

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


# orjson reads an integer beyond 64 bits as a float where json keeps it whole: such
# JSON (19 digits in a row, anywhere) goes to json. Found with one C-speed pass.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


@functools.cache
def _orjson_loads() -> Callable[[bytes], Any] | None:
    """orjson's loads when it is installed (the "fast" extra); imported on first use,
    so that importing the SDK loads nothing optional."""
    try:
        import orjson  # noqa: PLC0415
    except ImportError:
        return None
    return orjson.loads


def _loads(raw: bytes) -> Any:
    """JSON as ``json.loads`` reads it, with orjson where that reads the same (1.5x
    for an indicator, the check included): what orjson refuses and json takes
    (UTF-16, lone surrogates, NaN), long integers and every error go to json, so the
    result and the error are json's."""
    fast = _orjson_loads() if isinstance(raw, bytes) else None
    if fast is not None and _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return fast(raw)
        except ValueError:  # orjson.JSONDecodeError: json says why, or reads it
            pass
    return json.loads(raw)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _datetime(seconds: int, nanos: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


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
class Receipt:
    """Proof of record of an accepted object: its entry in the exchange's audit log.

    Keep it. With an inclusion proof and a signed checkpoint fetched at any later
    time, :func:`verify_receipt` shows, offline, that the exchange's log holds
    this entry and cannot drop or change it without the change being detected.
    """

    log_index: int
    """Position of the entry in the audit log (0-based)."""
    leaf_hash: bytes
    """RFC 6962 leaf hash of the entry: SHA-256(0x00 || entry)."""
    entry: bytes
    """The entry's canonical bytes (sorted-key JSON: object id, version, SHA-256 of
    the stored object, submitter, time, and the hash of the entry before it)."""

    @classmethod
    def _from_pb(cls, message: pb.Receipt) -> Receipt:
        return cls(log_index=message.log_index, leaf_hash=message.leaf_hash, entry=message.entry)


ERASE_REASONS = (
    "victim-data",
    "informant-data",
    "inaccurate",
    "court-order",
    "data-subject-request",
    "retention",
    "expired",
    "other",
)
"""The reason codes :meth:`ExchangeClient.erase` takes (never free text: the reason
travels to every recipient and stays in the audit log)."""


@dataclass(frozen=True, slots=True)
class EraseResult:
    """What :meth:`ExchangeClient.erase` did."""

    object_id: str
    versions: list[str]
    """The versions erased, oldest first."""
    reason: str
    erased_at: datetime
    receipt: Receipt
    """The erasure's entry in the audit log (it names the versions and the digests of
    what they held, never their content)."""
    already_erased: bool
    """True when the object had been erased before: the result is that erasure's."""
    referenced_by: list[str]
    """Objects you may see that refer to the erased one (sightings of it,
    relationships to it): you may want to review, revoke or erase them too."""

    @classmethod
    def _from_pb(cls, message: pb.EraseResponse) -> EraseResult:
        stamp = message.erased_at
        return cls(
            object_id=message.object_id,
            versions=list(message.versions),
            reason=message.reason,
            erased_at=_datetime(stamp.seconds, stamp.nanos),
            receipt=Receipt._from_pb(message.receipt),
            already_erased=message.already_erased,
            referenced_by=list(message.referenced_by),
        )


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
    receipt: Receipt | None = None
    """For an accepted object: its entry in the audit log (see :func:`verify_receipt`);
    ``None`` otherwise, or when the exchange does not give receipts."""

    @classmethod
    def _from_pb(cls, message: pb.ObjectResult) -> ObjectResult:
        outcome = _OUTCOMES.get(message.outcome, "unspecified")
        rejection = RejectedObject._from_pb(message) if outcome == "rejected" else None
        return cls(
            object_id=message.object_id,
            version=message.version,
            outcome=outcome,
            index=message.index,
            rejection=rejection,
            notice=_one_line(message.notice),
            receipt=Receipt._from_pb(message.receipt) if message.HasField("receipt") else None,
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


@dataclass(frozen=True, slots=True)
class SubmitProgress:
    """Where :meth:`ExchangeClient.submit_many` stands, handed to ``on_progress`` after
    each batch the exchange answered."""

    objects_sent: int
    """Objects put on the stream so far (answered or not)."""
    objects_done: int
    """Objects the exchange has answered for (accepted, duplicate, rejected or in a
    refused batch)."""
    accepted: int
    duplicates: int
    rejected: int
    total: int | None
    """How many objects there are in all, when the input has a length; else ``None``."""

    @property
    def fraction(self) -> float | None:
        """``objects_done / total`` (0.0 to 1.0), or ``None`` without a total."""
        if not self.total:
            return None
        return min(self.objects_done / self.total, 1.0)


@dataclass(frozen=True, slots=True)
class BatchError:
    """A batch of :meth:`ExchangeClient.submit_many` the exchange refused as a whole."""

    batch: int
    """The batch number (0-based): objects ``batch * batch_size`` onwards."""
    error: str
    """The exchange's one-line reason."""
    object_ids: list[str] = field(default_factory=list)
    """The ids of the objects of that batch (those that had one)."""


@dataclass(frozen=True, slots=True)
class SubmitSummary:
    """What :meth:`ExchangeClient.submit_many` did with every object, all batches together."""

    accepted: list[str]
    """Ids of the objects stored and queued for delivery."""
    duplicates: list[str]
    """Ids of the objects the exchange already held (nothing changed)."""
    rejected: list[RejectedObject]
    """The objects refused one by one, each with the reason (``index`` is the
    position in its batch; see ``results``)."""
    errors: list[BatchError]
    """Batches refused as a whole (none of their objects was stored)."""
    results: list[ObjectResult]
    """Every answered object's outcome, in submission order."""
    batches: int = 0
    """How many batches were sent."""

    @property
    def ok(self) -> bool:
        """True when nothing was rejected and no batch was refused."""
        return not self.rejected and not self.errors


@dataclass(frozen=True)
class Delivery:
    """One STIX object delivered by a subscription.

    ``object_json`` is the object exactly as the exchange stored it (the raw bytes:
    nothing decoded them); ``object`` is the same, decoded on first access into a
    dict (~1.5x faster with orjson installed: ``pip install exchange-client[fast]``).
    A subscriber that only stores or forwards objects need never decode them.
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
        # A subscriber catching up builds tens of thousands of these a second: the
        # fields are copied into the instance's dict at once (a frozen dataclass's
        # __init__ sets each through object.__setattr__, 3x the time), and
        # ``accepted_at`` is made on first access (__getattr__ below). The message is
        # not kept: it would keep its whole response (up to 500 objects) alive.
        stamp = message.accepted_at
        delivery = object.__new__(cls)
        delivery.__dict__.update(
            object_json=message.object,
            object_id=message.object_id,
            object_type=message.object_type,
            version=message.version,
            submitter=message.submitter,
            submitter_identity=message.submitter_identity,
            tlp=_TLPS.get(message.tlp, "unspecified"),
            cursor=message.cursor,
            _accepted=(stamp.seconds, stamp.nanos),
        )
        return delivery

    if not TYPE_CHECKING:  # for mypy, every attribute is declared above

        def __getattr__(self, name: str) -> Any:
            # Only called for an attribute the instance does not hold: ``accepted_at``
            # of a delivery from _from_pb before its first use.
            accepted = self.__dict__.get("_accepted")
            if name != "accepted_at" or accepted is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            value = self.__dict__["accepted_at"] = _datetime(*accepted)
            return value

    # Defined last: inside the class body the name shadows the builtin ``object``.
    @cached_property
    def object(self) -> dict[str, Any]:
        """The STIX object as a dict (decoded from ``object_json`` on first access)."""
        return cast(dict[str, Any], _loads(self.object_json))


# -- the audit log ---------------------------------------------------------------------


def _checkpoint(message: audit_pb.Checkpoint) -> Checkpoint:
    """The checkpoint the signed note says (the note is the truth, not the fields beside it)."""
    try:
        return Checkpoint.parse(message.note, message.signature)
    except CheckpointError as exc:
        raise ExchangeError(f"the exchange sent a malformed checkpoint: {exc}") from None


@dataclass(frozen=True, slots=True)
class AuditedVersion:
    """One object version an audit entry lists."""

    object_id: str
    version: str
    digest: str
    """SHA-256 (hex) of the stored object body."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the exchange's audit log: who did what, when, to which object.

    ``data`` is what the log commits to (its leaf hash covers it); the other
    fields are read from it for convenience. ``inclusion_proof`` is set when the
    entries were asked for with ``with_proofs_at=`` (a tree size).
    """

    index: int
    """Position in the log (0-based)."""
    at: datetime
    """When it happened (timezone-aware, UTC)."""
    action: str
    """``"submit"``, ``"deliver"``, ``"subscribe.start"``, ``"lookup"``,
    ``"audit.query"``, ``"credential.revoke"``..."""
    actor: str
    """Partner id of who did it (``"operator"`` for the operator's command line)."""
    partner: str
    """Partner id the action concerns, when another one (``""`` otherwise)."""
    object_id: str
    version: str
    digest: str
    """SHA-256 (hex) of the stored object, for entries about one."""
    owner: str
    """Partner id of the object's submitter."""
    detail: dict[str, Any]
    """More about it: outcome, reason, channel, cursor, filters..."""
    data: bytes = field(repr=False)
    """The entry's canonical bytes (sorted-key JSON)."""
    leaf_hash: bytes = field(repr=False)
    """SHA-256(0x00 || data)."""
    inclusion_proof: list[bytes] = field(default_factory=list, repr=False)
    """With ``with_proofs_at=N``: the audit path of this entry in the tree of size N."""
    objects: list[AuditedVersion] = field(default_factory=list)
    """The object versions a ``"deliver"`` entry lists: what ``actor`` received of
    ``owner``'s objects between ``at`` and ``detail["last_at"]`` (``object_id``,
    ``version`` and ``digest`` are then empty)."""

    @property
    def receipt(self) -> Receipt:
        """The entry as a :class:`Receipt`, to check with :func:`verify_receipt`."""
        return Receipt(log_index=self.index, leaf_hash=self.leaf_hash, entry=self.data)

    @classmethod
    def _from_pb(cls, message: audit_pb.AuditEntry) -> AuditEntry:
        try:
            detail = json.loads(message.detail_json) if message.detail_json else {}
        except ValueError:
            detail = {"raw": message.detail_json}
        if not isinstance(detail, dict):
            detail = {"raw": detail}
        return cls(
            index=message.index,
            at=_datetime(message.at.seconds, message.at.nanos),
            action=message.action,
            actor=message.actor,
            partner=message.partner,
            object_id=message.object_id,
            version=message.version,
            digest=message.digest,
            owner=message.owner,
            detail=detail,
            data=message.data,
            leaf_hash=message.leaf_hash,
            inclusion_proof=list(message.inclusion_proof),
            objects=[AuditedVersion(o.object_id, o.version, o.digest) for o in message.objects],
        )


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Proof that the entry at ``log_index`` is in the log's tree of ``tree_size`` entries."""

    log_index: int
    tree_size: int
    hashes: list[bytes]
    """The audit path, leaf to root (RFC 9162 section 2.1.3)."""
    checkpoint: Checkpoint | None = None
    """The signed checkpoint of ``tree_size``, when the proof was asked for against
    the latest one (``tree_size=0``)."""

    @classmethod
    def _from_pb(cls, message: audit_pb.GetInclusionProofResponse) -> InclusionProof:
        return cls(
            log_index=message.log_index,
            tree_size=message.tree_size,
            hashes=list(message.hashes),
            checkpoint=_checkpoint(message.checkpoint) if message.HasField("checkpoint") else None,
        )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What the exchange found re-deriving every hash of its log and checking every
    checkpoint (:meth:`ExchangeClient.verify_log`)."""

    intact: bool
    entries_checked: int
    checkpoints_checked: int
    first_bad_index: int | None
    """When not intact: the first entry found wrong (``0`` as well when the problem is
    a checkpoint's own, such as its signature: ``problem`` says which); ``None`` when
    intact."""
    problem: str
    """When not intact: what is wrong with it."""
    summary: str
    """One line, as ``exchange audit verify`` prints it."""

    @classmethod
    def _from_pb(cls, message: audit_pb.VerifyLogResponse) -> VerifyResult:
        return cls(
            intact=message.intact,
            entries_checked=message.entries_checked,
            checkpoints_checked=message.checkpoints_checked,
            first_bad_index=None if message.intact else message.first_bad_index,
            problem=_one_line(message.problem),
            summary=_one_line(message.summary),
        )

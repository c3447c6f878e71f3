"""The calls of both clients, minus the I/O: checking arguments, building requests,
reading responses. :class:`ExchangeClient` and :class:`AsyncExchangeClient` only
send what these build and hand back what these read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from exchange_protocol.checkpoint import Checkpoint
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import exchange_pb2 as pb

from exchange_client._bundle import BundleInput, encode_bundle
from exchange_client._config import MAX_MESSAGE_BYTES
from exchange_client._errors import ExchangeError, ValidationError
from exchange_client._models import (
    ERASE_REASONS,
    Delivery,
    PartnerKind,
    SubmitResult,
    _audience,
    _checkpoint,
)

__all__ = [
    "BundleRequests",
    "ResultOrder",
    "audit_entries_request",
    "checkpoint_of",
    "consistency_proof_request",
    "delivery_of",
    "get_request",
    "inclusion_proof_request",
    "submit_request",
    "subscribe_request",
    "verify_log_request",
]

# Room for the protobuf framing around the bundle bytes (tags, lengths, request id).
_FRAMING_BYTES = 1024

Names = Iterable[str] | str
Kinds = Iterable[PartnerKind | str] | PartnerKind | str


def check_size(data: bytes) -> None:
    """Refuse, before sending, a bundle no gRPC message may carry."""
    if len(data) + _FRAMING_BYTES > MAX_MESSAGE_BYTES:
        message = (
            f"bundle is {len(data)} bytes; one message may carry at most "
            f"{MAX_MESSAGE_BYTES - _FRAMING_BYTES} bytes: split it into smaller bundles"
        )
        raise ValidationError(message, code="INVALID_ARGUMENT")


def _instant(value: datetime | str | None, name: str) -> datetime | None:
    """``since=`` / ``until=``: a datetime (naive means UTC) or ISO 8601 text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} must be a datetime or ISO 8601 text such as '2026-11-27' or"
                f" '2026-11-27T10:00:00Z', not {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or ISO 8601 text, not {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def count(value: int | None, name: str, minimum: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _strings(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


# -- submitting --------------------------------------------------------------------


def submit_request(
    bundle: BundleInput, communities: Names, recipients: Names, exclude_kinds: Kinds
) -> pb.SubmitRequest:
    audience = _audience(communities, recipients, exclude_kinds)
    data = encode_bundle(bundle)
    check_size(data)
    return pb.SubmitRequest(bundle=data, audience=audience)


class BundleRequests:
    """The request side of SubmitStream: encodes bundles lazily, remembers why it stopped.

    gRPC consumes this iterator on its own (thread or task) and swallows its
    exceptions, so a bundle that cannot be read or encoded ends the requests and
    is re-raised to the caller once the results of the bundles before it have
    been handed out.
    """

    def __init__(
        self,
        bundles: Iterable[BundleInput],
        communities: Names = (),
        recipients: Names = (),
        exclude_kinds: Kinds = (),
    ) -> None:
        self._bundles = bundles
        # Checked now, before the stream opens: an unknown kind raises here.
        self._audience = _audience(communities, recipients, exclude_kinds)
        self.sent = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pb.SubmitStreamRequest]:
        try:
            for bundle in self._bundles:
                data = encode_bundle(bundle)
                check_size(data)
                yield pb.SubmitStreamRequest(
                    bundle=data, request_id=str(self.sent), audience=self._audience
                )
                self.sent += 1
        except Exception as err:  # noqa: BLE001 - handed to the caller's thread, raised there
            self.error = err


class ResultOrder:
    """Puts SubmitStream answers back in request order (the exchange may answer out of it)."""

    def __init__(self) -> None:
        self._done: dict[str, SubmitResult] = {}
        self.expected = 0

    def add(self, response: pb.SubmitStreamResponse) -> list[SubmitResult]:
        """The results that are now next in order (possibly none)."""
        request_id = response.request_id or str(self.expected + len(self._done))
        self._done[request_id] = SubmitResult._from_pb(response.result, response.error)
        ready: list[SubmitResult] = []
        while str(self.expected) in self._done:
            ready.append(self._done.pop(str(self.expected)))
            self.expected += 1
        return ready

    def finish(self, requests: BundleRequests) -> None:
        """At the end of the stream: raise what stopped the requests, or a missing answer."""
        if requests.error is not None:
            raise requests.error
        if self._done or self.expected != requests.sent:
            raise ExchangeError(
                f"the exchange answered {self.expected + len(self._done)} of {requests.sent}"
                " bundles on the stream, or answered them out of order",
                code="UNKNOWN",
            )


# -- looking up and subscribing -----------------------------------------------------


def get_request(object_id: str, version: str | None) -> pb.GetObjectRequest:
    if not isinstance(object_id, str) or not object_id.strip():
        raise ValueError("object_id must be a STIX id such as 'indicator--<uuid>'")
    return pb.GetObjectRequest(object_id=object_id.strip(), version=(version or "").strip())


def erase_request(object_id: str, reason: str) -> pb.EraseRequest:
    if not isinstance(object_id, str) or not object_id.strip():
        raise ValueError("object_id must be a STIX id such as 'indicator--<uuid>'")
    if reason not in ERASE_REASONS:
        raise ValueError(f"reason must be one of {', '.join(ERASE_REASONS)}, not {reason!r}")
    return pb.EraseRequest(object_id=object_id.strip(), reason=reason)


def delivery_of(response: pb.GetObjectResponse, request: pb.GetObjectRequest) -> Delivery:
    if not response.HasField("delivery"):
        raise ExchangeError(
            f"the exchange answered the look-up of {request.object_id} without an object",
            code="UNKNOWN",
        )
    return Delivery._from_pb(response.delivery)


def subscribe_request(
    types: Iterable[str] | str | None,
    labels: Iterable[str] | str | None,
    cursor: str | None,
    from_beginning: bool,
    max_batch: int | None,
) -> pb.SubscribeRequest:
    if cursor and from_beginning:
        raise ValueError("pass either cursor= or from_beginning=True, not both")
    request = pb.SubscribeRequest(types=_strings(types), labels=_strings(labels))
    if cursor:
        request.cursor = cursor
    elif from_beginning:
        request.from_beginning = True
    if max_batch is not None:
        request.max_batch = count(max_batch, "max_batch", 1)
    return request


# -- the audit log -------------------------------------------------------------------


def audit_entries_request(
    *,
    partner: str | None,
    object_id: str | None,
    action: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    page_size: int | None,
    with_proofs_at: int | None,
) -> audit_pb.QueryEntriesRequest:
    request = audit_pb.QueryEntriesRequest(
        partner=(partner or "").strip(),
        object_id=(object_id or "").strip(),
        action=(action or "").strip(),
        page_size=count(page_size, "page_size", 1),
        proof_tree_size=count(with_proofs_at, "with_proofs_at", 1),
    )
    start, end = _instant(since, "since"), _instant(until, "until")
    if start is not None:
        request.since.FromDatetime(start)
    if end is not None:
        request.until.FromDatetime(end)
    if start is not None and end is not None and start > end:
        raise ValueError(f"since ({start.isoformat()}) is after until ({end.isoformat()})")
    return request


def checkpoint_of(response: audit_pb.GetCheckpointResponse) -> Checkpoint:
    if not response.HasField("checkpoint"):
        raise ExchangeError("the exchange answered without a checkpoint", code="UNKNOWN")
    return _checkpoint(response.checkpoint)


def inclusion_proof_request(log_index: int, tree_size: int) -> audit_pb.GetInclusionProofRequest:
    return audit_pb.GetInclusionProofRequest(
        log_index=count(log_index, "log_index", 0), tree_size=count(tree_size, "tree_size", 0)
    )


def consistency_proof_request(first: int, second: int) -> audit_pb.GetConsistencyProofRequest:
    first, second = count(first, "first", 1), count(second, "second", 1)
    if first > second:
        raise ValueError(f"first ({first}) must not be larger than second ({second})")
    return audit_pb.GetConsistencyProofRequest(first_tree_size=first, second_tree_size=second)


def verify_log_request(start: int, end: int) -> audit_pb.VerifyLogRequest:
    start, end = count(start, "start", 0), count(end, "end", 0)
    if end and start >= end:
        raise ValueError(f"start ({start}) must be smaller than end ({end})")
    return audit_pb.VerifyLogRequest(start=start, end=end)

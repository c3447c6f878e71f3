"""AuditService: review and verify the audit log. Thin: authenticate, check the
request, ask the store / ``AuditLog`` / ``verify_log``, protobuf out.

Who reads what is policy's (``policy.audit_scope``): a partner with the ``audit``
role reads every entry, any other partner the entries of its own actions and those
about the objects it submitted (who received what it shared). Checkpoints, proofs
and the public key are for every authenticated partner (a receipt holder must be
able to verify); VerifyLog needs ``audit``. Every call is itself recorded, once
(not per page), with its filters and outcome (``ok``, ``invalid``, ``denied``).

Every request field is bounded before it is recorded or reaches the store
(invariant 6): the QueryEntries filters are short lines of text (a NUL would make
PostgreSQL fail the query), a page token is one this service gave, timestamps are
in range. QueryEntries pages are bounded by bytes as well as entries, so that no
page exceeds a gRPC message however large entries are (one larger entry goes
alone), and the store is asked for about a page at a time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from exchange_protocol.checkpoint import Checkpoint, CheckpointError
from exchange_protocol.pb import audit_pb2 as pb
from exchange_protocol.pb import audit_pb2_grpc as pb_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from exchange import policy
from exchange.audit.entries import Action, AuditEntry, AuditQuery, Event
from exchange.audit.log import AuditLog
from exchange.audit.signer import Signer
from exchange.audit.verify import verify_log
from exchange.auth import Authenticator, require
from exchange.errors import ExchangeError, InvalidArgument, PermissionDenied
from exchange.model import Partner, Role
from exchange.services._convert import seconds_of, timestamp_pb
from exchange.services._status import guard_stream, guard_unary
from exchange.stix._explain import printable, short
from exchange.store import AuditStore, SignedCheckpoint

__all__ = [
    "MAX_FILTER_CHARS",
    "MAX_PAGE_BYTES",
    "MAX_PAGE_SIZE",
    "AuditService",
    "checkpoint_to_pb",
    "entry_to_pb",
]

Context = grpc.aio.ServicerContext[Any, Any]
Filters = dict[str, str | int | float | bool | list[str]]

# Entries per QueryEntries message: the default and the cap.
MAX_PAGE_SIZE = 1000
# Bytes of entries per QueryEntries message (one larger entry goes alone): far under
# any gRPC message limit.
MAX_PAGE_BYTES = 1024 * 1024
# A QueryEntries filter (a partner id, a STIX id): characters at most.
MAX_FILTER_CHARS = 256
# Page tokens this service gives are ~30 characters.
_MAX_TOKEN_CHARS = 64
# Entries asked of the store for the first page (then about a page's bytes' worth).
_FIRST_ASK = 100
# Room in a message for one entry beyond its own encoding (tag and length).
_FRAMING = 8
_TOKEN_PREFIX = b"after:"
_ACTIONS = sorted(a.value for a in Action)
# Control characters (NUL among them), line and paragraph separators, bidi controls:
# never in a partner id or a STIX id, and NUL is refused by PostgreSQL.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The range of a protobuf Timestamp (years 1 to 9999), in seconds.
_TIMESTAMP_SECONDS = range(-62_135_596_800, 253_402_300_800)


class AuditService(pb_grpc.AuditServiceServicer):
    def __init__(
        self, auth: Authenticator, store: AuditStore, log: AuditLog, signer: Signer
    ) -> None:
        self._auth = auth
        self._store = store
        self._log = log
        self._signer = signer

    async def _partner(self, context: Context) -> Partner:
        caller = await self._auth.authenticate(
            context.invocation_metadata() or (), context.auth_context()
        )
        return caller.partner

    @contextlib.asynccontextmanager
    async def _recorded(self, partner: Partner, rpc: str, filters: Filters) -> AsyncIterator[None]:
        """Record the call once its request is judged: the block checks (and for a
        unary call answers) it; a refusal is recorded with its outcome, then raised."""
        try:
            yield
        except ExchangeError as exc:
            outcome = "denied" if isinstance(exc, PermissionDenied) else "invalid"
            await self._record(partner, rpc, filters, outcome)
            raise
        await self._record(partner, rpc, filters, "ok")

    async def _record(self, partner: Partner, rpc: str, filters: Filters, outcome: str) -> None:
        detail: Filters = {"rpc": rpc, **filters, "outcome": outcome}
        event = Event(Action.AUDIT_QUERY, actor=partner.partner_id, at=time.time(), detail=detail)
        await self._store.append_audit([event])

    # -- entries ----------------------------------------------------------------------

    @guard_stream
    async def QueryEntries(
        self, request: pb.QueryEntriesRequest, context: Context
    ) -> AsyncIterator[pb.QueryEntriesResponse]:
        partner = await self._partner(context)
        filters = _query_filters(request)
        async with self._recorded(partner, "QueryEntries", filters):
            query = _query(request)
            after = _after(request.page_token)
            size = await self._store.audit_size()
            tree_size = request.proof_tree_size
            if tree_size > size:
                raise InvalidArgument(
                    f"proof_tree_size {tree_size:,} is beyond the audit log, which holds"
                    f" {size:,} entries; use a checkpoint's tree_size"
                )
            # The entries as they were when the call came (this call's own entry not
            # among them), or those of the tree the proofs are for.
            bound = tree_size or size
        page_size = min(request.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        found = _Found(self._store, query, policy.audit_scope(partner), after, bound)
        while True:
            response = pb.QueryEntriesResponse()
            used = 0
            while len(response.entries) < page_size and await found.ahead():
                entry = found.peek()
                message = response.entries.add()
                entry_to_pb(entry, message)
                if tree_size:
                    message.inclusion_proof.extend(
                        await self._log.inclusion_proof(entry.index, tree_size)
                    )
                cost = message.ByteSize() + _FRAMING
                if used and used + cost > MAX_PAGE_BYTES:
                    del response.entries[-1]  # the next page starts with it
                    break
                used += cost
                found.take()
            if not response.entries:
                return
            more = await found.ahead()
            if more:
                response.next_page_token = _token(response.entries[-1].index)
            yield response
            if not more:
                return

    # -- checkpoints and proofs ---------------------------------------------------------

    @guard_unary
    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Context
    ) -> pb.GetCheckpointResponse:
        partner = await self._partner(context)
        async with self._recorded(partner, "GetCheckpoint", {}):
            signed = await self._log.checkpoint()
        return pb.GetCheckpointResponse(checkpoint=checkpoint_to_pb(signed, self._signer.key_id))

    @guard_unary
    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Context
    ) -> pb.GetInclusionProofResponse:
        partner = await self._partner(context)
        filters: Filters = {"log_index": request.log_index, "tree_size": request.tree_size}
        async with self._recorded(partner, "GetInclusionProof", filters):
            response = pb.GetInclusionProofResponse(
                log_index=request.log_index, tree_size=request.tree_size
            )
            if request.tree_size == 0:
                signed = await self._log.checkpoint()
                response.tree_size = signed.tree_size
                response.checkpoint.CopyFrom(checkpoint_to_pb(signed, self._signer.key_id))
            if request.log_index >= response.tree_size:
                raise InvalidArgument(_not_in_tree(request.log_index, response.tree_size))
            hashes = await self._log.inclusion_proof(request.log_index, response.tree_size)
            response.hashes.extend(hashes)
        return response

    @guard_unary
    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Context
    ) -> pb.GetConsistencyProofResponse:
        partner = await self._partner(context)
        first, second = request.first_tree_size, request.second_tree_size
        async with self._recorded(
            partner, "GetConsistencyProof", {"first": first, "second": second}
        ):
            if first == 0 or first > second:
                raise InvalidArgument(
                    f"no consistency proof from {first:,} to {second:,} entries:"
                    " first_tree_size must be at least 1 and at most second_tree_size"
                )
            hashes = await self._log.consistency_proof(first, second)
        return pb.GetConsistencyProofResponse(hashes=hashes)

    @guard_unary
    async def GetPublicKey(
        self, request: pb.GetPublicKeyRequest, context: Context
    ) -> pb.GetPublicKeyResponse:
        partner = await self._partner(context)
        async with self._recorded(partner, "GetPublicKey", {}):
            pass
        return pb.GetPublicKeyResponse(
            public_key_pem=self._signer.public_key_pem, key_id=self._signer.key_id
        )

    # -- verification ---------------------------------------------------------------------

    @guard_unary
    async def VerifyLog(
        self, request: pb.VerifyLogRequest, context: Context
    ) -> pb.VerifyLogResponse:
        partner = await self._partner(context)
        filters: Filters = {"start": request.start, "end": request.end}
        async with self._recorded(partner, "VerifyLog", filters):
            require(partner, Role.AUDIT, "verify the audit log")
            size = await self._store.audit_size()
            end = request.end or size
            if end > size:
                raise InvalidArgument(
                    f"end {end:,} is beyond the audit log, which holds {size:,} entries"
                )
            if request.start > end or (request.end and request.start == end):
                raise InvalidArgument(
                    f"start {request.start:,} must be before end {end:,} (0: the end of the log)"
                )
            report = await verify_log(
                self._store, self._signer.public_key_pem, start=request.start, end=end
            )
        return pb.VerifyLogResponse(
            intact=report.intact,
            entries_checked=report.entries_checked,
            checkpoints_checked=report.checkpoints_checked,
            first_bad_index=report.first_bad_index or 0,
            problem=report.problem,
            summary=report.summary,
        )


class _Found:
    """The entries a QueryEntries call returns, read from the store ahead of the pages:
    about a page's bytes at a time (sized from the entries read so far), so that the
    store is never asked for many more entries than a page holds."""

    def __init__(
        self, store: AuditStore, query: AuditQuery, scope: str, after: int, bound: int
    ) -> None:
        self._store = store
        self._query = query
        self._scope = scope
        self._after = after
        self._bound = bound
        self._buffer: deque[AuditEntry] = deque()
        self._exhausted = False
        self._ask = _FIRST_ASK
        self._read_bytes = 0
        self._read_entries = 0

    async def ahead(self) -> bool:
        """Whether another entry follows (reading more from the store if needed)."""
        if not self._buffer and not self._exhausted:
            ask = dataclasses.replace(self._query, after_index=self._after, limit=self._ask)
            found = await self._store.audit_entries(ask, only_of=self._scope)
            if found:
                self._after = found[-1].index
            within = [e for e in found if e.index < self._bound]
            self._exhausted = len(found) < self._ask or len(within) < len(found)
            self._buffer.extend(within)
            self._read_entries += len(found)
            self._read_bytes += sum(len(e.data) for e in found)
            # Next time, about a page's bytes (an entry's message holds its bytes
            # about twice: as they are and as fields).
            mean = 2 * self._read_bytes // max(self._read_entries, 1) + 64
            self._ask = max(2, min(MAX_PAGE_SIZE + 1, MAX_PAGE_BYTES // mean + 1))
        return bool(self._buffer)

    def peek(self) -> AuditEntry:
        return self._buffer[0]

    def take(self) -> None:
        self._buffer.popleft()


# -- protobuf <-> the log ------------------------------------------------------------------


def entry_to_pb(entry: AuditEntry, message: pb.AuditEntry | None = None) -> pb.AuditEntry:
    """Fill ``message`` (or a new one) with ``entry`` (without an inclusion proof)."""
    message = pb.AuditEntry() if message is None else message
    event = entry.event
    message.index = entry.index
    message.data = entry.data
    message.leaf_hash = entry.leaf_hash
    message.at.CopyFrom(timestamp_pb(event.at))
    message.action = event.action.value
    message.actor = event.actor
    message.partner = event.partner
    message.object_id = event.object_id
    message.version = event.version
    message.digest = event.digest
    message.owner = event.owner
    message.detail_json = orjson.dumps(dict(event.detail), option=orjson.OPT_SORT_KEYS).decode()
    for object_id, version, digest in event.objects:
        message.objects.add(object_id=object_id, version=version, digest=digest)
    return message


def checkpoint_to_pb(signed: SignedCheckpoint, key_id: str) -> pb.Checkpoint:
    try:
        parsed = Checkpoint.parse(signed.note, signed.signature)
    except CheckpointError:
        # The note is the truth, and the caller checks it; the fields are for reading.
        return pb.Checkpoint(
            note=signed.note, signature=signed.signature, tree_size=signed.tree_size
        )
    message = pb.Checkpoint(
        note=signed.note,
        signature=signed.signature,
        origin=parsed.origin,
        tree_size=parsed.tree_size,
        root_hash=parsed.root_hash,
        key_id=key_id,
    )
    message.at.FromNanoseconds(parsed.at_ns)
    return message


# -- requests ------------------------------------------------------------------------------


def _query(request: pb.QueryEntriesRequest) -> AuditQuery:
    partner = _filter_text("partner", request.partner, "a partner id")
    object_id = _filter_text("object_id", request.object_id, "a STIX id")
    if request.action and request.action not in _ACTIONS:
        raise InvalidArgument(
            f"action: unknown action '{_shown(request.action, 64)}'; expected one of"
            f" {', '.join(_ACTIONS)}"
        )
    since = _instant("since", request.since) if request.HasField("since") else None
    until = _instant("until", request.until) if request.HasField("until") else None
    if since is not None and until is not None and since > until:
        raise InvalidArgument(
            f"since ({_iso(since)}) is after until ({_iso(until)}): no entry can match"
        )
    return AuditQuery(
        partner=partner,
        object_id=object_id,
        action=request.action,
        since=since,
        until=until,
    )


def _filter_text(name: str, value: str, expected: str) -> str:
    """A text filter, refused (naming it) unless one short line without control
    characters: it is recorded, and a NUL would make PostgreSQL fail the query."""
    if len(value) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{name}: {len(value):,} characters; expected {expected} of at most"
            f" {MAX_FILTER_CHARS} characters"
        )
    found = _CONTROL.search(value)
    if found is not None:
        raise InvalidArgument(
            f"{name}: holds the control character U+{ord(found.group()):04X} at position"
            f" {found.start()}; expected {expected}, without control characters"
        )
    return value


def _instant(name: str, stamp: Timestamp) -> float:
    if stamp.seconds not in _TIMESTAMP_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(
            f"{name}: {stamp.seconds} s and {stamp.nanos} ns is not a time; expected one"
            " from year 1 to 9999 (nanos from 0 to 999,999,999)"
        )
    return seconds_of(stamp)


def _query_filters(request: pb.QueryEntriesRequest) -> Filters:
    """The request's filters, as recorded (only those given): bounded and printable
    whatever the request held, since a refused request is recorded too."""
    filters: Filters = {}
    for name in ("partner", "object_id", "action"):
        value = getattr(request, name)
        if value:
            filters[name] = _shown(value, MAX_FILTER_CHARS)
    given = (
        ("since", request.since, request.HasField("since")),
        ("until", request.until, request.HasField("until")),
    )
    for name, stamp, present in given:
        if present:
            if stamp.seconds in _TIMESTAMP_SECONDS and 0 <= stamp.nanos < 1_000_000_000:
                filters[name] = _iso(seconds_of(stamp))
            else:
                filters[name] = f"{stamp.seconds}s {stamp.nanos}ns"
    if request.proof_tree_size:
        filters["proof_tree_size"] = request.proof_tree_size
    if request.page_token:
        filters["page_token"] = _shown(request.page_token, _MAX_TOKEN_CHARS)
    return filters


def _shown(text: str, limit: int) -> str:
    """Caller's text as recorded or quoted: at most ``limit`` characters (and "..."),
    printable (cut before it is escaped, which is cheap, and after, which bounds it)."""
    return short(printable(short(text, limit)), limit)


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + str(index).encode()).decode().rstrip("=")


def _after(token: str) -> int:
    """The index a page token continues after (-1: from the start)."""
    if not token:
        return -1
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument(
            f"page_token: {len(token):,} characters, not one this service gave (those are"
            f" at most {_MAX_TOKEN_CHARS}); pass a next_page_token unchanged, or none to"
            " start from the first entry"
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if not raw.startswith(_TOKEN_PREFIX):
            raise ValueError
        digits = raw[len(_TOKEN_PREFIX) :]
        if not digits.isdigit():
            raise ValueError
        return int(digits)
    except (binascii.Error, ValueError):
        raise InvalidArgument(
            "page_token is not one this service gave; pass a next_page_token unchanged,"
            " or none to start from the first entry"
        ) from None


def _not_in_tree(index: int, tree_size: int) -> str:
    if tree_size == 0:
        return "the audit log's tree of 0 entries holds no entry: ask for a larger tree_size"
    return (
        f"entry {index:,} is not in the tree of {tree_size:,} entries (indexes 0 to"
        f" {tree_size - 1:,}); ask for a larger tree_size, or 0 for the latest checkpoint"
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")

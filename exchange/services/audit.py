"""AuditService: review and verify the audit log. Thin: authenticate, check the
request, ask the store / ``AuditLog`` / ``verify_log``, protobuf out.

Who reads what is policy's (``policy.audit_scope``): a partner with the ``audit``
role reads every entry, any other partner the entries of its own actions and those
about the objects it submitted (who received what it shared). Checkpoints, proofs
and the public key are for every authenticated partner (a receipt holder must be
able to verify); VerifyLog needs ``audit``. Every call is itself recorded, once
(not per page), with its filters and outcome (``ok``, ``invalid``, ``denied``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from exchange_client._checkpoint import Checkpoint, CheckpointError
from exchange_client._pb import audit_pb2 as pb
from exchange_client._pb import audit_pb2_grpc as pb_grpc

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
from exchange.store import SignedCheckpoint, Store

__all__ = ["MAX_PAGE_SIZE", "AuditService", "checkpoint_to_pb", "entry_to_pb"]

Context = grpc.aio.ServicerContext[Any, Any]
Filters = dict[str, str | int | float | bool | list[str]]

# Entries per QueryEntries message: the default and the cap.
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = b"after:"
_ACTIONS = sorted(a.value for a in Action)


class AuditService(pb_grpc.AuditServiceServicer):
    def __init__(self, auth: Authenticator, store: Store, log: AuditLog, signer: Signer) -> None:
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
        scope = policy.audit_scope(partner)
        while True:
            # One more than a page: whether another page follows.
            ask = dataclasses.replace(query, after_index=after, limit=page_size + 1)
            found = [
                e for e in await self._store.audit_entries(ask, only_of=scope) if e.index < bound
            ]
            more = len(found) > page_size
            page = found[:page_size]
            if not page:
                return
            response = pb.QueryEntriesResponse(
                next_page_token=_token(page[-1].index) if more else ""
            )
            for entry in page:
                message = response.entries.add()
                entry_to_pb(entry, message)
                if tree_size:
                    message.inclusion_proof.extend(
                        await self._log.inclusion_proof(entry.index, tree_size)
                    )
            yield response
            if not more:
                return
            after = page[-1].index

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
    if request.action and request.action not in _ACTIONS:
        raise InvalidArgument(
            f"action: unknown action {request.action!r}; expected one of {', '.join(_ACTIONS)}"
        )
    since = seconds_of(request.since) if request.HasField("since") else None
    until = seconds_of(request.until) if request.HasField("until") else None
    if since is not None and until is not None and since > until:
        raise InvalidArgument(
            f"since ({_iso(since)}) is after until ({_iso(until)}): no entry can match"
        )
    return AuditQuery(
        partner=request.partner,
        object_id=request.object_id,
        action=request.action,
        since=since,
        until=until,
    )


def _query_filters(request: pb.QueryEntriesRequest) -> Filters:
    """The request's filters, as recorded (only those given)."""
    filters: Filters = {}
    for name in ("partner", "object_id", "action"):
        value = getattr(request, name)
        if value:
            filters[name] = str(value)
    if request.HasField("since"):
        filters["since"] = _iso(seconds_of(request.since))
    if request.HasField("until"):
        filters["until"] = _iso(seconds_of(request.until))
    if request.proof_tree_size:
        filters["proof_tree_size"] = request.proof_tree_size
    if request.page_token:
        filters["page_token"] = request.page_token[:64]
    return filters


def _token(index: int) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + str(index).encode()).decode().rstrip("=")


def _after(token: str) -> int:
    """The index a page token continues after (-1: from the start)."""
    if not token:
        return -1
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

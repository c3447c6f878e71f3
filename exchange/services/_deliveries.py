"""Subscribe's messages as bytes: each record's delivery encoded once, shared by every
stream that sends it.

A protobuf message on the wire is the concatenation of its fields, each a key (field
number and wire type) followed, for strings, bytes and messages, by a varint length and
the bytes. So a ``SubscribeResponse`` is, per delivery, key 1 + length + the
``Delivery``, then key 2 + length + the batch's cursor; and a ``Delivery`` is its
``object`` (field 1), its fields 2 to 8 (ids, submitter, TLP, accepted_at), and last its
``cursor`` (field 9), the one field that differs between streams. Protobuf writes the
fields of a message in field-number order, so these are the very bytes
``SerializeToString`` gives for the message ``subscribe_response`` builds
(tests/unit/test_deliveries.py holds them equal).

Fields 2 to 8 are encoded by protobuf itself, once per record, on its first delivery,
and kept with the record (``StoredObject.delivery_fields``); the object's body is not
copied into that cache (so a record held by the live tail weighs what the tail counts),
only into each message. A stream's work per delivery is its cursor and a join.

An erasure notice (``Delivery.erased``, field 10, no ``object``) is rare: it is built
and encoded by protobuf itself, its bytes joined with the others.
"""

from __future__ import annotations

from exchange_protocol.pb import exchange_pb2 as pb

from exchange.model import StoredObject
from exchange.services._convert import TLP_TO_PB
from exchange.subscriptions import Batch, Notice

__all__ = ["fill_delivery", "fill_notice", "subscribe_response_bytes"]

# Keys: field number << 3 | wire type 2 (length-delimited).
_DELIVERIES = b"\x0a"  # SubscribeResponse.deliveries = 1
_BATCH_CURSOR = b"\x12"  # SubscribeResponse.cursor = 2
_OBJECT = b"\x0a"  # Delivery.object = 1
_CURSOR = b"\x4a"  # Delivery.cursor = 9


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths below 16 KiB (cursors, most deliveries) from a table (~0.6 MB): two per
# delivery of every stream, and computing them took about a third of the assembly.
_SHORT = tuple(_varint(n) for n in range(1 << 14))


def _length(n: int) -> bytes:
    return _SHORT[n] if n < 16384 else _varint(n)


def fill_delivery(delivery: pb.Delivery, stored: StoredObject, cursor: str) -> None:
    """Set every field of ``delivery`` for ``stored`` (GetObject's answer, and the
    reference the shared bytes are held to)."""
    obj = stored.obj
    delivery.object = obj.body
    _fill_shared(delivery, stored)
    delivery.cursor = cursor


def fill_notice(delivery: pb.Delivery, notice: Notice, cursor: str) -> None:
    """Set every field of ``delivery`` for an erasure notice: the copy's ids and
    submitter, ``erased``; no object, version, TLP or acceptance time."""
    delivery.object_id = notice.object_id
    delivery.object_type = notice.object_type
    delivery.submitter = notice.submitter
    delivery.submitter_identity = notice.submitter_identity
    erased = delivery.erased
    erased.versions.extend(notice.versions)
    erased.reason = notice.reason
    erased.erased_at.FromNanoseconds(int(notice.erased_at * 1e9))
    erased.referenced_by.extend(notice.referenced_by)
    delivery.cursor = cursor


def _fill_shared(delivery: pb.Delivery, stored: StoredObject) -> None:
    # Fields 2 to 8: what every stream sends alike, besides the body.
    obj = stored.obj
    delivery.object_id = obj.object_id
    delivery.object_type = obj.object_type
    delivery.version = obj.version
    delivery.submitter = stored.submitter
    delivery.submitter_identity = obj.created_by_ref
    delivery.tlp = TLP_TO_PB[obj.tlp]
    delivery.accepted_at.FromNanoseconds(int(stored.accepted_at * 1e9))


def _shared(stored: StoredObject) -> tuple[bytes, bytes, int]:
    """The record's delivery bytes before the cursor, in two pieces around its body
    (the body's key and length, then fields 2 to 8), and the length of all three."""
    shared = stored.delivery_fields
    if shared is None:
        fields = pb.Delivery()
        _fill_shared(fields, stored)
        body = stored.obj.body
        # proto3 leaves an empty bytes field out.
        head = _OBJECT + _length(len(body)) if body else b""
        rest = fields.SerializeToString()
        shared = (head, rest, len(head) + len(body) + len(rest))
        stored.keep_delivery_fields(shared)
    return shared


def _with_notices(batch: Batch) -> bytes:
    """``subscribe_response_bytes`` of a batch holding notices: each object's delivery
    as the fast path joins it, each notice encoded by protobuf."""
    parts: list[bytes] = []
    for delivery in batch.deliveries:
        if isinstance(delivery.stored, Notice):
            message = pb.Delivery()
            fill_notice(message, delivery.stored, delivery.cursor)
            encoded = message.SerializeToString()
            parts += (_DELIVERIES, _length(len(encoded)), encoded)
        else:
            parts.append(subscribe_response_bytes(Batch([delivery], "")))
    if batch.cursor:
        cursor = batch.cursor.encode()
        parts += (_BATCH_CURSOR, _length(len(cursor)), cursor)
    return b"".join(parts)


def subscribe_response_bytes(batch: Batch) -> bytes:
    """The ``SubscribeResponse`` of ``batch``, encoded."""
    parts: list[bytes] = []
    add = parts.extend
    if batch.notices:
        return _with_notices(batch)
    for delivery in batch.deliveries:
        stored: StoredObject = delivery.stored  # type: ignore[assignment]
        head, rest, size = stored.delivery_fields or _shared(stored)
        cursor = delivery.cursor.encode()
        if cursor:
            n = len(cursor)
            cursor_length = _length(n)
            size += 1 + len(cursor_length) + n
            add((_DELIVERIES, _length(size), head, stored.obj.body, rest, _CURSOR))
            add((cursor_length, cursor))
        else:
            add((_DELIVERIES, _length(size), head, stored.obj.body, rest))
    if batch.cursor:
        cursor = batch.cursor.encode()
        add((_BATCH_CURSOR, _length(len(cursor)), cursor))
    return b"".join(parts)

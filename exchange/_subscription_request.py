"""What a Subscribe caller sends, and what it gets back to resume from.

``SubscriptionRequest``: a request whose every field was checked against its bound
before anything records it. ``Cursor``: the read position a delivery carries (see
exchange.subscriptions); ``StreamPosition`` keeps one stream's position and re-encodes only
what moved, since it runs once per delivery of every stream.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import orjson

from exchange.bus import TopicPartition
from exchange.errors import InvalidArgument
from exchange.stix._explain import printable, short

__all__ = [
    "MAX_CURSOR_CHARS",
    "MAX_FILTER_VALUES",
    "MAX_LABEL_CHARS",
    "Cursor",
    "StreamPosition",
    "SubscriptionRequest",
    "described",
    "subscription_request",
]

# Bounds on a request's fields, far above real use (a cursor holds one entry of about
# 60 characters per topic-partition of the partner): what a caller sends is checked
# against them before it is decoded or recorded.
MAX_CURSOR_CHARS = 64 * 1024
MAX_FILTER_VALUES = 64  # types, and labels, per request
MAX_LABEL_CHARS = 256
# STIX 2.1 type names: 3-250 of a-z, 0-9 and '-'.
_TYPE_NAME = re.compile(r"[a-z0-9-]{3,250}")

_CURSOR_VERSION = 1
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).decode()


def _aligned(raw: bytes) -> bytes:
    """Pad JSON with spaces to a multiple of 3 bytes: the base64 of a concatenation of
    such pieces is then the concatenation of their base64 texts."""
    return raw + b" " * (-len(raw) % 3)


_HEAD = _b64(_aligned(b'{"v":%d,"p":[' % _CURSOR_VERSION))
_TAIL = _b64(b"]}").rstrip("=")


@functools.lru_cache(maxsize=4096)
def _piece(prefix: bytes, offset: int, seq: int) -> str:
    """One topic-partition's part of a cursor text. Every stream that delivers a record
    from the live tail puts the same one in its cursor (the record's offset and seq):
    encoded by the first, looked up (a fifth of the cost) by the others."""
    return _b64(_aligned(b"%b%d,%d]" % (prefix, offset, seq)))


class _CursorText:
    """The cursor text of a fixed set of topic-partitions, re-encoding only the one
    that moved: it runs once per delivery of every stream."""

    __slots__ = ("_index", "_parts", "_prefixes")

    def __init__(self, tps: Iterable[TopicPartition]) -> None:
        order = sorted(tps)
        self._index = {tp: i + 1 for i, tp in enumerate(order)}
        # '["green",1,' (after a comma for all but the first): the offset and seq follow.
        self._prefixes = {
            tp: (b"," if i else b"") + orjson.dumps(list(tp))[:-1] + b","
            for i, tp in enumerate(order)
        }
        self._parts = [_HEAD, *([""] * len(order)), _TAIL]

    def set(self, tp: TopicPartition, offset: int, seq: int) -> None:
        self._parts[self._index[tp]] = _piece(self._prefixes[tp], offset, seq)

    def text(self) -> str:
        return "".join(self._parts)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Read position per topic-partition (next offset, highest sequence seen).

    Encoded as URL-safe base64 (unpadded) of ``{"v":1,"p":[[topic,partition,offset,seq],
    ...]}``, entries sorted, each padded with spaces (see ``_aligned``)."""

    positions: Mapping[TopicPartition, tuple[int, int]]

    def encode(self) -> str:
        text = _CursorText(self.positions)
        for tp, (off, seq) in self.positions.items():
            text.set(tp, off, seq)
        return text.text()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        _check_cursor_length(text)
        bad = InvalidArgument(
            "cursor is not one this exchange issued; pass the cursor of the last delivery"
            " you handled, or start from_beginning / from now"
        )
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            doc = orjson.loads(raw)
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            raise bad from None
        if not isinstance(doc, dict) or doc.get("v") != _CURSOR_VERSION:
            raise bad
        positions: dict[TopicPartition, tuple[int, int]] = {}
        entries = doc.get("p")
        if not isinstance(entries, list):
            raise bad
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 4
                or not isinstance(entry[0], str)
                or not all(isinstance(x, int) and x >= -1 for x in entry[1:])
            ):
                raise bad
            positions[(entry[0], entry[1])] = (entry[2], entry[3])
        return cls(positions)


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """What a subscriber asked for; every field within its bound (InvalidArgument
    naming the field and the bound otherwise), so that it can be recorded."""

    types: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    cursor: str | None = None
    from_beginning: bool = False
    max_batch: int = 500  # 0: the server's

    def __post_init__(self) -> None:
        _check_count("types", self.types)
        _check_count("labels", self.labels)
        for value in sorted(self.types):
            if not _TYPE_NAME.fullmatch(value):
                raise InvalidArgument(
                    f"types holds {_shown(value)}, not a STIX type name (3-250 characters"
                    " of a-z, 0-9 and '-', e.g. indicator)"
                )
        for value in sorted(self.labels):
            if len(value) > MAX_LABEL_CHARS:
                raise InvalidArgument(
                    f"labels holds a label of {len(value):,} characters ({_shown(value)}),"
                    f" over the {MAX_LABEL_CHARS} a label filter may have"
                )
            if printable(value) != value:
                raise InvalidArgument(
                    f"labels holds {_shown(value)}, with a control or invisible character;"
                    " a label filter is one line of visible text"
                )
        if self.cursor is not None:
            _check_cursor_length(self.cursor)
        if self.max_batch < 0:
            raise InvalidArgument(
                f"max_batch is {self.max_batch}; give 0 (the server's) or a positive number"
            )


def subscription_request(
    types: Collection[str],
    labels: Collection[str],
    *,
    cursor: str | None,
    from_beginning: bool,
    max_batch: int,
) -> SubscriptionRequest:
    """A request from a caller's fields, counted before they are copied."""
    _check_count("types", types)
    _check_count("labels", labels)
    return SubscriptionRequest(
        types=frozenset(types),
        labels=frozenset(labels),
        cursor=cursor,
        from_beginning=from_beginning and cursor is None,
        max_batch=max_batch,
    )


def _check_cursor_length(text: str) -> None:
    if len(text) > MAX_CURSOR_CHARS:
        raise InvalidArgument(
            f"cursor is {len(text):,} characters, over the {MAX_CURSOR_CHARS:,} of any cursor"
            " this exchange issues; pass the cursor of the last delivery you handled"
        )


def _check_count(field: str, values: Collection[str]) -> None:
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidArgument(
            f"{field} holds {len(values):,} values, over the {MAX_FILTER_VALUES} a request may"
            f" give; filter on fewer {field} (or on none, to receive all)"
        )


def _shown(value: str) -> str:
    return f'"{printable(short(value))}"'


class StreamPosition:
    """Where a stream is: next offset and highest sequence seen per topic-partition."""

    __slots__ = ("_text", "moved", "offsets", "seqs")

    def __init__(self, offsets: dict[TopicPartition, int], seqs: dict[TopicPartition, int]) -> None:
        self.offsets = offsets
        self.seqs = seqs
        self._text = _CursorText(offsets)
        # Topic-partitions whose offset or seq changed since the last cursor.
        self.moved = set(offsets)

    def cursor(self) -> str:
        if self.moved:
            for tp in self.moved:
                self._text.set(tp, self.offsets[tp], self.seqs.get(tp, -1))
            self.moved.clear()
        return self._text.text()


def described(request: SubscriptionRequest) -> dict[str, str | list[str]]:
    """A stream's start and filters, for its audit entry: checked values only, and
    the cursor's digest (it decoded, but can be long), so that the entry stays small."""
    start = "cursor" if request.cursor else "beginning" if request.from_beginning else "now"
    detail: dict[str, str | list[str]] = {"start": start}
    if request.cursor:
        detail["cursor_sha256"] = hashlib.sha256(request.cursor.encode()).hexdigest()
    if request.types:
        detail["types"] = sorted(request.types)
    if request.labels:
        detail["labels"] = sorted(request.labels)
    return detail

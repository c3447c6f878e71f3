"""How large one audit entry may be, whatever its caller hands in (invariant 6).

Every request field should be bounded before anything records it; this is the net
under that rule, applied by ``Event`` itself so that no caller, present or future,
can make an entry large: strings are cut to ``MAX_TEXT_CHARS``, lists to
``MAX_LIST_ITEMS``, the detail to ``MAX_DETAIL_KEYS`` keys whose values share
``MAX_DETAIL_BYTES`` of JSON. A cut leaves a marker saying how much there was.

The cuts are a pure function of the input (the canonical bytes stay deterministic)
and bounding a bounded value changes nothing, so an entry read back from its bytes
is the entry that was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MAX_DETAIL_BYTES",
    "MAX_DETAIL_KEYS",
    "MAX_KEY_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_TEXT_CHARS",
    "bounded_detail",
    "bounded_text",
]

MAX_TEXT_CHARS = 1_000  # one string: a field, a detail value, a list item
MAX_LIST_ITEMS = 100  # one list of the detail (a cut one ends with a marker item)
MAX_DETAIL_KEYS = 32
MAX_KEY_CHARS = 64
# The JSON of the detail's values, shared equally by its keys.
MAX_DETAIL_BYTES = 8 * 1024

# JSON needs at most 6 bytes for one character (a control character as \u0000).
_WORST_BYTES_PER_CHAR = 6
_CUT_KEYS = "~cut"
# The integers orjson writes (int64 and uint64); larger ones are kept as text.
_ORJSON_INTEGERS = range(-(2**63), 2**64)
# By number of keys: each value's share of MAX_DETAIL_BYTES, and the length up to
# which a string fits it whatever it holds (no need to measure it).
_SHARES = [
    (share, min((share - 2) // _WORST_BYTES_PER_CHAR, MAX_TEXT_CHARS))
    for share in (MAX_DETAIL_BYTES // max(n, 1) for n in range(MAX_DETAIL_KEYS + 1))
]


def bounded_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text``, or its start and a marker, ``limit`` characters in all."""
    if len(text) <= limit:
        return text
    marker = f"...[cut: {len(text):,} characters]"
    return text[: max(limit - len(marker), 0)] + marker


def bounded_detail(detail: Mapping[str, Any]) -> Mapping[str, Any]:
    """``detail`` itself when within bounds (the common case, checked cheaply), else
    a bounded copy."""
    if len(detail) <= MAX_DETAIL_KEYS:
        share, sure = _SHARES[len(detail)]
        for key, value in detail.items():
            if type(key) is str and len(key) <= MAX_KEY_CHARS:
                if type(value) is str and len(value) <= sure:
                    continue
                if _fits(value, share):
                    continue
            break
        else:
            return detail
    keys: list[str] = sorted(detail, key=str)
    cut = len(keys) > MAX_DETAIL_KEYS
    if cut:
        keys = keys[: MAX_DETAIL_KEYS - 1]
    share = MAX_DETAIL_BYTES // max(len(keys) + cut, 1)
    out: dict[str, Any] = {}
    for key in keys:
        out[_bounded_key(str(key))] = _bounded_value(detail[key], share)
    if cut:
        out[_CUT_KEYS] = f"{len(detail) - len(keys):,} more keys cut"
    return out


def _fits(value: object, share: int) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT_CHARS and _cost(value, share) <= share
    if isinstance(value, bool | float) or value is None:
        return True
    if isinstance(value, int):
        return value in _ORJSON_INTEGERS
    if isinstance(value, list):
        return (
            len(value) <= MAX_LIST_ITEMS
            and all(isinstance(v, str) and len(v) <= MAX_TEXT_CHARS for v in value)
            and _cost(value, share) <= share
        )
    return False


def _cost(value: str | list[str], share: int) -> int:
    """The JSON bytes of ``value``: measured only when the worst case would not fit."""
    if isinstance(value, str):
        worst = _WORST_BYTES_PER_CHAR * len(value) + 2
    else:
        worst = sum(_WORST_BYTES_PER_CHAR * len(v) + 3 for v in value) + 2
    return worst if worst <= share else len(orjson.dumps(value))


def _bounded_key(key: str) -> str:
    if len(key) <= MAX_KEY_CHARS:
        return key
    # Distinct long keys stay distinct: the cut one names the whole key's hash.
    digest = hashlib.sha256(key.encode(errors="surrogatepass")).hexdigest()[:12]
    return f"{key[: MAX_KEY_CHARS - 16]}...#{digest}"


def _bounded_value(value: Any, share: int) -> Any:
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int):
        return value if value in _ORJSON_INTEGERS else _fit(bounded_text(str(value)), share)
    if isinstance(value, list | tuple):
        return _bounded_list(list(value), share)
    if not isinstance(value, str):
        value = orjson.dumps(value, default=str).decode() if isinstance(value, dict) else str(value)
    return _fit(bounded_text(value), share)


def _fit(text: str, room: int) -> str:
    """``text``, or its start and a marker, in at most ``room`` bytes of JSON."""
    if len(orjson.dumps(text)) <= room:
        return text
    marker = f"...[cut: {len(text):,} characters]"
    # The longest start that fits, by bisection (and within MAX_TEXT_CHARS with the marker).
    low, high = 0, max(min(len(text), MAX_TEXT_CHARS - len(marker)), 0)
    while low < high:
        middle = (low + high + 1) // 2
        if len(orjson.dumps(text[:middle] + marker)) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + marker


def _bounded_list(items: list[Any], share: int) -> list[Any]:
    total = len(items)
    kept: list[Any] = []
    for item in items[:MAX_LIST_ITEMS]:
        if isinstance(item, str):
            kept.append(bounded_text(item))
        elif (
            isinstance(item, bool | float)
            or item is None
            or (isinstance(item, int) and item in _ORJSON_INTEGERS)
        ):
            kept.append(item)
        else:
            kept.append(bounded_text(str(item)))
    if total <= MAX_LIST_ITEMS and len(orjson.dumps(kept)) <= share:
        return kept
    # Keep the first items that fit beside the marker (room for it reserved).
    room = share - 2 - len(f'"...[{total:,} items, {total:,} cut]"')
    fitted: list[Any] = []
    for item in kept[: MAX_LIST_ITEMS - 1]:
        room -= len(orjson.dumps(item)) + 1
        if room < 0:
            break
        fitted.append(item)
    return [*fitted, f"...[{total:,} items, {total - len(fitted):,} cut]"]

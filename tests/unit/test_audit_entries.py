"""No caller can make an audit entry large (invariant 6, defect 7's safety net): whatever
an ``Event`` is given, its canonical bytes stay a few KB, the cuts are marked and
deterministic, and an entry read back from its bytes is the entry that was written."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.audit._bounds import (
    MAX_DETAIL_BYTES,
    MAX_DETAIL_KEYS,
    MAX_LIST_ITEMS,
    MAX_TEXT_CHARS,
)
from exchange.audit.entries import MAX_LISTED, Action, Detail, Event

PREVIOUS = bytes(32)
# Six string fields of MAX_TEXT_CHARS, each character escaped in the worst case
# (6 bytes), the detail's budget, its keys, and the fixed fields around them.
WORST_ENTRY_BYTES = 6 * 6 * MAX_TEXT_CHARS + MAX_DETAIL_BYTES + MAX_DETAIL_KEYS * 6 * 64 + 1024


def roundtrip(event: Event) -> bytes:
    data = event.encode(7, PREVIOUS)
    index, previous, back = Event.decode(data)
    assert (index, previous, back) == (7, PREVIOUS, event)
    assert back.encode(7, PREVIOUS) == data
    return data


def test_a_12_mb_cursor_and_thousands_of_labels_make_a_small_entry() -> None:
    cursor = "A" * 12_000_000
    labels = [f"label-{n}-" + "x" * 500 for n in range(5_000)]
    detail: Detail = {"start": "cursor", "cursor": cursor, "labels": labels}
    event = Event(Action.SUBSCRIBE_START, "kestrel-1", 1_700_000_000.0, detail=detail)
    data = roundtrip(event)
    assert len(data) < 8 * 1024
    kept = event.detail
    assert str(kept["cursor"]).startswith("AAAA")
    assert str(kept["cursor"]).endswith("...[cut: 12,000,000 characters]")
    assert len(str(kept["cursor"])) <= MAX_TEXT_CHARS
    shown = kept["labels"]
    assert isinstance(shown, list) and len(shown) <= MAX_LIST_ITEMS
    assert shown[0] == labels[0] and shown[-1].startswith("...[5,000 items, ")
    # The same input, the same bytes: the log's hashes stay reproducible.
    again = Event(Action.SUBSCRIBE_START, "kestrel-1", 1_700_000_000.0, detail=detail)
    assert again.encode(7, PREVIOUS) == data


def test_every_string_field_is_cut() -> None:
    huge = "indicator--" + "9" * 1_000_000
    event = Event(
        Action.LOOKUP, "p" * 5_000, 1.0, partner="q" * 2_000, object_id=huge, owner="o" * 1_001
    )
    for value in (event.actor, event.partner, event.object_id, event.owner):
        assert len(value) == MAX_TEXT_CHARS and "...[cut: " in value
    assert event.object_id.startswith("indicator--999")
    assert len(roundtrip(event)) < 6 * 1024


def test_many_keys_are_cut_with_a_marker() -> None:
    detail = {f"key-{n:03d}": "v" for n in range(500)}
    event = Event(Action.AUDIT_QUERY, "p", 1.0, detail=detail)
    assert len(event.detail) == MAX_DETAIL_KEYS
    assert event.detail["~cut"] == "469 more keys cut"
    assert "key-000" in event.detail and "key-499" not in event.detail
    roundtrip(event)


def test_long_keys_stay_distinct() -> None:
    detail = {"k" * 100 + "a": 1, "k" * 100 + "b": 2}
    event = Event(Action.AUDIT_QUERY, "p", 1.0, detail=detail)
    assert len(event.detail) == 2 and sorted(event.detail.values()) == [1, 2]
    assert all(len(key) <= 64 for key in event.detail)
    roundtrip(event)


def test_control_characters_cost_their_escaped_size() -> None:
    # Each NUL takes 6 bytes of JSON: the budget is in bytes, not characters.
    event = Event(Action.SUBMIT, "p", 1.0, detail={"reason": "\x00" * 5_000})
    assert len(orjson.dumps(event.detail)) <= MAX_DETAIL_BYTES + 64
    roundtrip(event)


def test_integers_json_cannot_hold_become_text() -> None:
    event = Event(Action.AUDIT_QUERY, "p", 1.0, detail={"big": 10**100, "ok": 2**64 - 1})
    assert event.detail["ok"] == 2**64 - 1
    assert event.detail["big"] == str(10**100)
    roundtrip(event)


def test_an_ordinary_event_is_left_as_it_is() -> None:
    detail: Detail = {"channel": "subscribe", "cursor": "v1.abc", "labels": ["a", "b"], "n": 3}
    event = Event(Action.DELIVER, "p", 1.0, object_id="indicator--x", detail=detail)
    assert event.detail is detail
    roundtrip(event)


_text = st.text(min_size=0, max_size=3_000) | st.sampled_from(["", "x" * 1_001, "\x00" * 999])
_value = (
    _text
    | st.lists(_text, max_size=150)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
    | st.none()
)


@settings(max_examples=150, deadline=None)
@given(
    actor=_text,
    object_id=_text,
    detail=st.dictionaries(st.text(min_size=1, max_size=80), _value, max_size=40),
)
def test_any_event_is_bounded_and_reads_back_as_written(
    actor: str, object_id: str, detail: dict[str, object]
) -> None:
    # Any JSON value, not only what Detail allows: the net holds whatever it is given.
    event = Event(Action.SUBMIT, actor, 1.0, object_id=object_id, detail=detail)  # type: ignore[arg-type]
    data = roundtrip(event)
    assert len(data) <= WORST_ENTRY_BYTES
    assert len(orjson.dumps(dict(event.detail))) <= MAX_DETAIL_BYTES + MAX_DETAIL_KEYS * 400


# -- entries that list object versions (DELIVER) -------------------------------------------

_LISTED = ("indicator--x", "2026-01-01T00:00:00.000Z", "ab" * 32)


def test_an_entry_without_objects_keeps_the_bytes_of_earlier_releases() -> None:
    # Logs written before entries could list objects must still verify: no new key.
    event = Event(Action.DELIVER, "p", 1.0, object_id="indicator--x", detail={"channel": "s"})
    assert b'"objects"' not in event.encode(0, PREVIOUS)
    assert Event.decode(event.encode(0, PREVIOUS))[2].objects == ()


def test_listed_objects_read_back_as_written() -> None:
    listed = (_LISTED, ("identity--y", "2026-02-02T00:00:00Z", "cd" * 32))
    data = roundtrip(Event(Action.DELIVER, "p", 1.0, owner="o", objects=listed))
    assert orjson.loads(data)["objects"] == [list(t) for t in listed]


def test_listed_objects_are_bounded_too() -> None:
    # The net holds for what an entry lists as for every other field.
    event = Event(Action.DELIVER, "p", 1.0, objects=(("x" * 5_000, "\x00", "d"),))
    object_id, version, _ = event.objects[0]
    assert len(object_id) <= MAX_TEXT_CHARS and "\x00" not in version
    roundtrip(event)
    with pytest.raises(ValueError, match="at most 256"):
        Event(Action.DELIVER, "p", 1.0, objects=(_LISTED,) * (MAX_LISTED + 1))
    with pytest.raises(ValueError, match="id, version, digest"):
        Event(Action.DELIVER, "p", 1.0, objects=(("x", "y"),))  # type: ignore[arg-type]


@pytest.mark.parametrize("objects", ['[["x","y"]]', '["xyz"]', '[["x","y",3]]', '{"a":1}'])
def test_malformed_listed_objects_are_not_an_entry(objects: str) -> None:
    data = Event(Action.DELIVER, "p", 1.0, objects=(_LISTED,)).encode(0, PREVIOUS)
    doc = orjson.loads(data)
    doc["objects"] = orjson.loads(objects)
    with pytest.raises(ValueError, match="an object an audit entry lists"):
        Event.decode(orjson.dumps(doc))

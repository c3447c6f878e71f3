"""Bundle-level checks of decode_bundle."""

from __future__ import annotations

import orjson
import pytest

from exchange.config import Limits
from exchange.errors import InvalidBundle
from exchange.stix import decode_bundle

BUNDLE_ID = "bundle--9d49a5c0-dba9-5fec-b4b6-744f320032d9"


def bundle(objects: object, **extra: object) -> bytes:
    return orjson.dumps({"type": "bundle", "id": BUNDLE_ID, "objects": objects, **extra})


def refused(raw: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(InvalidBundle) as info:
        decode_bundle(raw, limits or Limits())
    return info.value.message


def test_returns_the_raw_objects_whatever_they_are() -> None:
    objects = [{"type": "indicator"}, 7, "x", None, [1]]
    assert decode_bundle(bundle(objects), Limits()) == objects


def test_bundle_id_is_optional_and_objects_may_be_empty() -> None:
    assert decode_bundle(b'{"type": "bundle", "objects": []}', Limits()) == []


def test_size_limit() -> None:
    raw = bundle([{"description": "x" * 200}])
    assert decode_bundle(raw, Limits(max_bundle_bytes=len(raw)))
    message = refused(raw, Limits(max_bundle_bytes=len(raw) - 1))
    assert message == f"bundle is {len(raw):,} bytes; the limit is {len(raw) - 1:,}"


def test_size_is_checked_before_anything_else() -> None:
    assert refused(b"[" * 100, Limits(max_bundle_bytes=10)).startswith("bundle is 100 bytes")


def test_size_message_uses_thousands_separators() -> None:
    raw = b" " * 20_000_000
    assert refused(raw) == "bundle is 20,000,000 bytes; the limit is 16,777,216"


def test_truncated_json_names_line_and_column() -> None:
    raw = b'{"type": "bundle",\n "objects": [\n    '
    assert refused(raw) == "not valid JSON: unexpected end of data at line 3 column 5"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff\xfe", b'{"a": "\xed\xa0\x80"}', b"{'type': 'bundle'}", b"[1,]", b"NaN"],
)
def test_not_json_or_not_utf8(raw: bytes) -> None:
    assert refused(raw).startswith("not valid JSON: ")


def test_100000_deep_array_is_a_clean_error() -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert refused(raw) == "JSON nested deeper than 32 levels"


def test_unterminated_deep_array_is_a_clean_error() -> None:
    assert refused(b"[" * 100_000).startswith(("JSON nested deeper", "not valid JSON"))


def test_depth_counts_the_bundle_as_level_one() -> None:
    # bundle(1) > objects list(2) > object(3) > nested lists...
    def nested(levels: int) -> object:
        value: object = "leaf"
        for _ in range(levels):
            value = [value]
        return value

    limits = Limits(max_depth=10)
    at_limit = bundle([{"deep": nested(7)}])  # 3 + 7 = 10
    assert decode_bundle(at_limit, limits)
    over = bundle([{"deep": nested(8)}])
    assert refused(over, limits) == "JSON nested deeper than 10 levels"


def test_depth_over_the_parsers_own_limit_maps_to_the_depth_message() -> None:
    raw = b'{"type": "bundle", "objects": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    # Our limit is higher than orjson's 1024: report the limit that actually applied.
    assert refused(raw, Limits(max_depth=5000)) == "JSON nested deeper than 1024 levels"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "a JSON array"),
        (b'"bundle"', "a JSON string"),
        (b"12", "a JSON number"),
        (b"null", "JSON null"),
        (b"true", "JSON true"),
    ],
)
def test_top_level_must_be_an_object(raw: bytes, kind: str) -> None:
    assert refused(raw) == (
        f'top level is {kind}; expected a STIX bundle object {{"type": "bundle", "objects": [...]}}'
    )


@pytest.mark.parametrize(
    ("doc", "what"),
    [
        ({"objects": []}, 'has no "type"'),
        ({"type": "indicator", "objects": []}, 'has type "indicator"'),
        ({"type": ["bundle"], "objects": []}, 'has "type" set to a JSON array'),
    ],
)
def test_top_level_type_must_be_bundle(doc: object, what: str) -> None:
    assert refused(orjson.dumps(doc)).startswith(f"top-level object {what}; expected a STIX bundle")


@pytest.mark.parametrize(
    ("doc", "what"),
    [
        ({"type": "bundle"}, "is missing"),
        ({"type": "bundle", "objects": {"a": 1}}, "is a JSON object"),
        ({"type": "bundle", "objects": None}, "is missing"),
    ],
)
def test_objects_must_be_a_list(doc: object, what: str) -> None:
    assert refused(orjson.dumps(doc)) == (
        f'bundle "objects" {what}; expected a list of STIX objects'
    )


def test_object_count_limit() -> None:
    limits = Limits(max_objects=3)
    assert len(decode_bundle(bundle([{}] * 3), limits)) == 3
    assert refused(bundle([{}] * 4), limits) == "bundle holds 4 objects; the limit is 3"


@pytest.mark.parametrize(
    "bundle_id",
    [
        "bundle--not-a-uuid",
        "indicator--9d49a5c0-dba9-5fec-b4b6-744f320032d9",
        "bundle--9D49A5C0-DBA9-5FEC-B4B6-744F320032D9",
        "bundle--9d49a5c0dba95fecb4b6744f320032d9",
        "bundle--9d49a5c0-dba9-5fec-04b6-744f320032d9",  # not the RFC 4122 variant
        "bundle--9d49a5c0-dba9-5fec-b4b6-744f320032d9\n",
        12,
        None,
    ],
)
def test_bundle_id_must_be_bundle_uuid(bundle_id: object) -> None:
    raw = orjson.dumps({"type": "bundle", "id": bundle_id, "objects": []})
    assert refused(raw).startswith('bundle "id" must be "bundle--" followed by a lower-case UUID')


def test_echoed_text_stays_on_one_line() -> None:
    raw = orjson.dumps({"type": "bundle\nok", "objects": []})
    assert "\n" not in refused(raw)
    raw = orjson.dumps({"type": "bundle", "id": "bundle--\r\n", "objects": []})
    assert refused(raw).endswith('got "bundle--\\r\\n"')


def test_checks_run_in_the_documented_order() -> None:
    # Too many objects AND a bad id: the count is reported first.
    raw = orjson.dumps({"type": "bundle", "id": "nope", "objects": [{}] * 5})
    assert refused(raw, Limits(max_objects=2)).startswith("bundle holds 5 objects")
    # Too deep AND not a bundle: depth first.
    assert refused(b"[" * 50 + b"]" * 50).startswith("JSON nested deeper")

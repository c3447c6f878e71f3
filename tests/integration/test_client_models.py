"""The SDK's offline parts: what submit() sends for each kind of input, and how
responses become SubmitResult and Delivery values."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from exchange_client import (
    Delivery,
    ExchangeClient,
    ObjectResult,
    Problem,
    RejectedObject,
    SubmitResult,
    ValidationError,
)
from exchange_client import _models as client_models
from exchange_client._bundle import encode_bundle
from exchange_protocol.pb import exchange_pb2 as pb

INDICATOR: dict[str, Any] = {
    "type": "indicator",
    "spec_version": "2.1",
    "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
    "created": "2024-05-01T10:00:00.000Z",
    "modified": "2024-05-01T10:00:00.000Z",
    "name": "Recruitment ad: fake modelling agency — “visa included”",
    "pattern": "[url:value = 'http://example.test/jobs']",
    "pattern_type": "stix",
    "valid_from": "2024-05-01T10:00:00Z",
}
BUNDLE: dict[str, Any] = {
    "type": "bundle",
    "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
    "objects": [INDICATOR],
}


# -- input normalisation ------------------------------------------------------


def test_dict_is_sent_as_compact_utf8_json() -> None:
    data = encode_bundle(BUNDLE)
    assert json.loads(data) == BUNDLE
    assert b"\n" not in data
    assert "“visa included”".encode() in data  # UTF-8, not \u escapes


def test_str_is_sent_as_is() -> None:
    text = json.dumps(BUNDLE, indent=2)
    assert encode_bundle(text) == text.encode("utf-8")
    # JSON that is no bundle: still sent, the exchange judges it.
    assert encode_bundle('{"not": "a bundle"}') == b'{"not": "a bundle"}'
    # Text that cannot be JSON is most likely a file name: refused here, never opened
    # (tests/unit/test_client_objects.py), and bytes are still sent as they are.
    with pytest.raises(ValidationError, match=r"pass a pathlib\.Path"):
        encode_bundle("not json")
    assert encode_bundle(b"not json") == b"not json"


def test_bytes_like_are_sent_as_is() -> None:
    raw = json.dumps(BUNDLE).encode()
    assert encode_bundle(raw) is raw
    assert encode_bundle(bytearray(raw)) == raw
    assert encode_bundle(memoryview(raw)) == raw


def test_path_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(b'{"type": "bundle"}\n')
    assert encode_bundle(path) == b'{"type": "bundle"}\n'

    class Custom(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(path)

    assert encode_bundle(Custom()) == b'{"type": "bundle"}\n'


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        encode_bundle(tmp_path / "nope.json")


def test_submit_of_missing_path_raises_before_any_call(tmp_path: Path) -> None:
    # Port 9 (discard) on localhost: nothing is contacted before the file is read.
    with (
        ExchangeClient(target="127.0.0.1:9", token="t") as client,
        pytest.raises(FileNotFoundError),
    ):
        client.submit(tmp_path / "nope.json")


def test_stix2_objects_are_serialized() -> None:
    stix2 = pytest.importorskip("stix2")
    indicator = stix2.Indicator(
        name="Advert reused across escort sites",
        pattern="[url:value = 'http://example.test/a']",
        pattern_type="stix",
    )
    bundle = stix2.Bundle(indicator)
    sent = json.loads(encode_bundle(bundle))
    assert sent["type"] == "bundle"
    assert sent["objects"][0]["id"] == indicator.id
    # stix2's own timestamp format (millisecond precision, Z) is kept.
    assert sent["objects"][0]["created"].endswith("Z")

    # stix2 objects inside a hand-built dict work too.
    sent = json.loads(encode_bundle({"type": "bundle", "id": bundle.id, "objects": [indicator]}))
    assert sent["objects"][0]["id"] == indicator.id
    assert sent["objects"][0]["created"] == json.loads(indicator.serialize())["created"]


def test_any_serialize_method_is_used() -> None:
    class Fake:
        def serialize(self) -> str:
            return '{"type": "bundle", "objects": []}'

    assert encode_bundle(Fake()) == b'{"type": "bundle", "objects": []}'


def test_datetimes_in_dicts_become_stix_timestamps() -> None:
    stamp = datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)
    precise = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    sent = json.loads(encode_bundle({"created": stamp, "modified": precise}))
    assert sent == {
        "created": "2024-05-01T10:00:00.123Z",
        "modified": "2024-05-01T10:00:00.123456Z",
    }


@pytest.mark.parametrize("value", [42, None, ["not", "a", "bundle"], object()])
def test_other_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="cannot submit"):
        encode_bundle(value)


def test_unencodable_values_in_a_dict_raise_type_error() -> None:
    with pytest.raises(TypeError, match="cannot encode"):
        encode_bundle({"type": "bundle", "objects": [object()]})


# -- SubmitResponse -> SubmitResult -------------------------------------------------


def _result(
    object_id: str,
    outcome: pb.Outcome.ValueType,
    index: int,
    rejection: pb.Rejection | None = None,
) -> pb.ObjectResult:
    return pb.ObjectResult(
        object_id=object_id,
        version="2024-05-01T10:00:00.000Z",
        outcome=outcome,
        rejection=rejection,
        index=index,
    )


def test_submit_result_mapping() -> None:
    response = pb.SubmitResponse(
        results=[
            _result("indicator--a", pb.OUTCOME_ACCEPTED, 0),
            _result(
                "indicator--b",
                pb.OUTCOME_REJECTED,
                1,
                pb.Rejection(
                    property="confidence",
                    expected="an integer from 0 to 100",
                    message="indicator--b: confidence: expected an integer from 0 to 100, got 250",
                ),
            ),
            _result("indicator--c", pb.OUTCOME_DUPLICATE, 2),
            _result("indicator--d", pb.OUTCOME_ACCEPTED, 3),
        ],
        accepted_count=2,
        duplicate_count=1,
        rejected_count=1,
    )
    result = SubmitResult._from_pb(response)
    assert result.accepted == ["indicator--a", "indicator--d"]
    assert result.duplicates == ["indicator--c"]
    assert result.rejected == [
        RejectedObject(
            object_id="indicator--b",
            reason="indicator--b: confidence: expected an integer from 0 to 100, got 250",
            property="confidence",
            expected="an integer from 0 to 100",
            index=1,
            version="2024-05-01T10:00:00.000Z",
            # From an exchange without the problems field: its one problem is listed.
            problems=(
                Problem(
                    "confidence",
                    "an integer from 0 to 100",
                    "property 'confidence': an integer from 0 to 100",
                ),
            ),
        )
    ]
    assert [r.object_id for r in result.results] == [
        "indicator--a",
        "indicator--b",
        "indicator--c",
        "indicator--d",
    ]
    assert [r.outcome for r in result.results] == ["accepted", "rejected", "duplicate", "accepted"]
    assert [r.index for r in result.results] == [0, 1, 2, 3]
    assert result.results[1].rejection is result.rejected[0]
    assert result.results[0].rejection is None
    assert not result.ok


def test_all_accepted_or_duplicate_is_ok() -> None:
    result = SubmitResult._from_pb(
        pb.SubmitResponse(
            results=[
                _result("indicator--a", pb.OUTCOME_ACCEPTED, 0),
                _result("indicator--b", pb.OUTCOME_DUPLICATE, 1),
            ]
        )
    )
    assert result.ok
    assert result.rejected == []
    assert SubmitResult._from_pb(pb.SubmitResponse()).ok


def test_refused_bundle_in_a_stream() -> None:
    result = SubmitResult._from_pb(pb.SubmitResponse(), "bundle is not JSON:\n line 1")
    assert result.error == "bundle is not JSON: line 1"
    assert not result.ok
    assert SubmitResult._from_pb(pb.SubmitResponse()).error is None


def test_rejection_reason_is_one_line() -> None:
    rejection = pb.Rejection(property="pattern", message="indicator--x: pattern:\n  bad\r\nsyntax")
    result = SubmitResult._from_pb(
        pb.SubmitResponse(results=[_result("indicator--x", pb.OUTCOME_REJECTED, 0, rejection)])
    )
    assert result.rejected[0].reason == "indicator--x: pattern: bad syntax"


def test_rejection_lists_every_problem() -> None:
    problems = [
        pb.Problem(property="confidence", expected="an integer from 0 to 100, got 250"),
        pb.Problem(
            property="pattern_type",
            expected="required property 'pattern_type' is missing",
            message="property 'pattern_type':\n required property 'pattern_type' is missing",
        ),
    ]
    rejection = pb.Rejection(
        property="confidence",
        expected="an integer from 0 to 100, got 250",
        message="indicator--x: 12 problems: 1) ...",
        problems=problems,
        more_problems=10,
    )
    result = SubmitResult._from_pb(
        pb.SubmitResponse(results=[_result("indicator--x", pb.OUTCOME_REJECTED, 0, rejection)])
    )
    [rejected] = result.rejected
    assert (rejected.property, rejected.expected) == (
        "confidence",
        "an integer from 0 to 100, got 250",
    )
    assert rejected.problems == (
        Problem(
            "confidence",
            "an integer from 0 to 100, got 250",
            # Worded by the SDK when the exchange sends no message.
            "property 'confidence': an integer from 0 to 100, got 250",
        ),
        Problem(
            "pattern_type",
            "required property 'pattern_type' is missing",
            "property 'pattern_type': required property 'pattern_type' is missing",
        ),
    )
    assert rejected.more_problems == 10


def test_rejection_without_message_gets_a_reason() -> None:
    rejection = pb.Rejection(property="created_by_ref", expected="an identity id")
    result = SubmitResult._from_pb(
        pb.SubmitResponse(
            results=[
                _result("indicator--x", pb.OUTCOME_REJECTED, 0, rejection),
                _result("", pb.OUTCOME_REJECTED, 1),
            ]
        )
    )
    assert result.rejected[0].reason == "indicator--x: created_by_ref: expected an identity id"
    assert result.rejected[1].reason == "objects[1]: rejected"


def test_unknown_outcome_is_kept_but_not_counted() -> None:
    result = SubmitResult._from_pb(
        pb.SubmitResponse(results=[_result("indicator--a", pb.OUTCOME_UNSPECIFIED, 0)])
    )
    assert result.results == [
        ObjectResult(
            object_id="indicator--a",
            version="2024-05-01T10:00:00.000Z",
            outcome="unspecified",
            index=0,
        )
    ]
    assert result.accepted == result.duplicates == []
    assert result.ok


def test_notices_of_accepted_objects() -> None:
    with_notice = _result("indicator--a", pb.OUTCOME_ACCEPTED, 0)
    with_notice.notice = "keeps the wider audience\n  of its earlier versions (community: gulf)"
    result = SubmitResult._from_pb(
        pb.SubmitResponse(results=[with_notice, _result("indicator--b", pb.OUTCOME_ACCEPTED, 1)])
    )
    assert [r.notice for r in result.results] == [
        "keeps the wider audience of its earlier versions (community: gulf)",
        "",
    ]
    assert result.ok
    # The field has a default, so results built by hand need not name it.
    assert ObjectResult(object_id="x", version="v", outcome="accepted", index=0).notice == ""


# -- Delivery -> Delivery --------------------------------------------------------


def _delivery(**overrides: Any) -> pb.Delivery:
    fields: dict[str, Any] = {
        "object": json.dumps(INDICATOR, ensure_ascii=False).encode(),
        "object_id": INDICATOR["id"],
        "object_type": "indicator",
        "version": INDICATOR["modified"],
        "submitter": "ngo-lighthouse",
        "submitter_identity": "identity--2f0a3b5e-7a42-4d5f-9c1e-1f2f0c7f1a11",
        "tlp": pb.TLP_AMBER_STRICT,
        "cursor": "c-000042",
    }
    fields.update(overrides)
    message = pb.Delivery(**fields)
    message.accepted_at.seconds = 1_714_557_600  # 2024-05-01T10:00:00Z
    message.accepted_at.nanos = 123_456_789
    return message


def test_delivery_mapping() -> None:
    delivery = Delivery._from_pb(_delivery())
    assert delivery.object_id == INDICATOR["id"]
    assert delivery.object_type == "indicator"
    assert delivery.version == INDICATOR["modified"]
    assert delivery.submitter == "ngo-lighthouse"
    assert delivery.submitter_identity == "identity--2f0a3b5e-7a42-4d5f-9c1e-1f2f0c7f1a11"
    assert delivery.tlp == "amber+strict"
    assert delivery.cursor == "c-000042"
    assert delivery.accepted_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert delivery.accepted_at.tzinfo is not None
    assert delivery.accepted_at.utcoffset() is not None
    assert isinstance(delivery.object_json, bytes)
    assert delivery.object == INDICATOR
    assert delivery.object is delivery.object  # decoded once


def test_delivery_object_is_decoded_lazily() -> None:
    delivery = Delivery._from_pb(_delivery(object=b"{not json"))
    assert delivery.object_json == b"{not json"  # building it did not decode
    with pytest.raises(ValueError, match="Expecting"):
        _ = delivery.object


def test_a_delivery_from_the_wire_is_the_delivery_its_fields_make() -> None:
    """Built without its __init__ and with ``accepted_at`` made on first use, it is
    still the dataclass it was: equal, hashable, copyable, picklable, replaceable."""
    message = _delivery()
    lazy = Delivery._from_pb(message)
    made = Delivery(
        object_json=message.object,
        object_id=message.object_id,
        object_type=message.object_type,
        version=message.version,
        submitter=message.submitter,
        submitter_identity=message.submitter_identity,
        tlp="amber+strict",
        accepted_at=datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
        cursor=message.cursor,
    )
    assert Delivery._from_pb(message) == made and hash(Delivery._from_pb(message)) == hash(made)
    assert repr(Delivery._from_pb(message)) == repr(made)
    assert pickle.loads(pickle.dumps(lazy)) == made  # noqa: S301 - our own bytes
    assert copy.copy(lazy) == made
    assert dataclasses.replace(lazy, cursor="c-1") == dataclasses.replace(made, cursor="c-1")
    assert dataclasses.asdict(lazy) == dataclasses.asdict(made)
    assert lazy.accepted_at is lazy.accepted_at  # made once
    with pytest.raises(AttributeError, match="no attribute 'objct'"):
        _ = lazy.objct  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        lazy.cursor = "c-2"  # type: ignore[misc]


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(INDICATOR).encode(),
        json.dumps(INDICATOR, ensure_ascii=False).encode(),
        # What orjson refuses and json takes: the result is json's all the same.
        b'{"n": 123456789012345678901234567890}',
        b'{"n": [-9223372036854775809, 18446744073709551616, 18446744073709551615]}',
        b'{"s": "\\ud800 lone surrogate"}',
        json.dumps(INDICATOR).encode("utf-16"),
        b'{"x": NaN, "y": 1e400}',
        b'{"a": 1, "a": 2}',
    ],
)
@pytest.mark.parametrize("with_orjson", [True, False])
def test_delivery_object_is_what_json_reads(
    raw: bytes, with_orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not with_orjson:  # the SDK without its "fast" extra
        monkeypatch.setattr(client_models, "_orjson_loads", lambda: None)
    delivery = Delivery._from_pb(_delivery(object=raw))
    assert delivery.object_json == raw  # the bytes as received, untouched
    assert repr(delivery.object) == repr(json.loads(raw))


@pytest.mark.parametrize(
    ("tlp", "name"),
    [
        (pb.TLP_CLEAR, "clear"),
        (pb.TLP_GREEN, "green"),
        (pb.TLP_AMBER, "amber"),
        (pb.TLP_AMBER_STRICT, "amber+strict"),
        (pb.TLP_RED, "red"),
        (pb.TLP_UNSPECIFIED, "unspecified"),
    ],
)
def test_tlp_names(tlp: pb.Tlp.ValueType, name: str) -> None:
    assert Delivery._from_pb(_delivery(tlp=tlp)).tlp == name


def test_delivery_repr_leaves_out_the_object_bytes() -> None:
    text = repr(Delivery._from_pb(_delivery()))
    assert "c-000042" in text
    assert "pattern" not in text

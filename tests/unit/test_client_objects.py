"""What the SDK writes and adds up by itself: sightings, revoked versions, bundles of
objects, and the tally of submit_many (no network)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from exchange_client import (
    TLP_AMBER,
    TLP_AMBER_STRICT,
    TLP_CLEAR,
    TLP_GREEN,
    TLP_RED,
    AsyncExchangeClient,
    BatchError,
    ObjectResult,
    RejectedObject,
    SubmitProgress,
    SubmitResult,
    SubmitSummary,
    ValidationError,
)
from exchange_client._batches import ManySubmission
from exchange_client._bundle import encode_bundle
from exchange_client._objects import later_than, revoked_version, sighting, stix_now

NOW = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)


def test_stix_now_has_milliseconds_in_utc() -> None:
    assert stix_now(NOW) == "2026-03-04T05:06:07.891Z"
    plus_two = timezone(timedelta(hours=2))
    assert stix_now(datetime(2026, 3, 4, 7, 6, 7, tzinfo=plus_two)) == "2026-03-04T05:06:07.000Z"
    assert stix_now(datetime(2026, 3, 4, 5, 6, 7)) == "2026-03-04T05:06:07.000Z"  # naive: UTC


# -- sightings ----------------------------------------------------------------------------


def test_sighting_has_everything_stix_asks() -> None:
    obj = sighting(
        "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
        count=4,
        first_seen=datetime(2026, 3, 1, tzinfo=UTC),
        last_seen="2026-03-02T10:00:00.25+01:00",
        tlp="green",
        description="four ads",
        now=NOW,
    )
    assert obj["type"] == "sighting" and obj["spec_version"] == "2.1"
    assert uuid.UUID(obj["id"].removeprefix("sighting--")).version == 4
    assert obj["created"] == obj["modified"] == "2026-03-04T05:06:07.891Z"
    assert obj["sighting_of_ref"] == "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    assert obj["count"] == 4
    assert obj["first_seen"] == "2026-03-01T00:00:00.000Z"
    assert obj["last_seen"] == "2026-03-02T09:00:00.250Z"
    assert obj["object_marking_refs"] == [TLP_GREEN]
    assert obj["description"] == "four ads"


@pytest.mark.parametrize(
    ("tlp", "marking"),
    [
        ("clear", TLP_CLEAR),
        ("GREEN", TLP_GREEN),
        ("amber", TLP_AMBER),
        ("amber+strict", TLP_AMBER_STRICT),
        ("red", TLP_RED),
    ],
)
def test_sighting_tlp(tlp: str, marking: str) -> None:
    assert sighting("indicator--1", tlp=tlp)["object_marking_refs"] == [marking]


def test_sighting_defaults() -> None:
    obj = sighting("indicator--1")
    assert obj["count"] == 1 and obj["object_marking_refs"] == [TLP_AMBER]
    assert "first_seen" not in obj and "last_seen" not in obj and "description" not in obj
    assert sighting("indicator--1")["id"] != obj["id"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tlp": "purple"}, ValueError, "unknown TLP"),
        ({"count": -1}, ValueError, "count"),
        ({"count": True}, TypeError, "count"),
        ({"first_seen": "yesterday"}, ValueError, "first_seen"),
        ({"last_seen": 5}, TypeError, "last_seen"),
        (
            {"first_seen": "2026-03-02T00:00:00Z", "last_seen": "2026-03-01T00:00:00Z"},
            ValueError,
            "before first_seen",
        ),
    ],
)
def test_sighting_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sighting("indicator--1", **kwargs)


def test_sighting_needs_a_stix_id() -> None:
    with pytest.raises(ValueError, match="STIX id"):
        sighting("not an id")


# -- revoked versions ---------------------------------------------------------------------


def test_revoked_version_keeps_everything_else() -> None:
    current = {
        "type": "indicator",
        "id": "indicator--1",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-02-01T00:00:00.000Z",
        "labels": ["x"],
    }
    revoked = revoked_version(current, now=NOW)
    assert revoked == {**current, "revoked": True, "modified": "2026-03-04T05:06:07.891Z"}
    assert current["modified"] == "2026-02-01T00:00:00.000Z"  # not changed in place


def test_revoked_version_is_strictly_later() -> None:
    assert later_than("2026-03-04T05:06:07.891Z", NOW) == "2026-03-04T05:06:07.892Z"
    assert later_than("2026-03-04T05:06:07.891999Z", NOW) == "2026-03-04T05:06:07.892Z"
    assert later_than("2030-01-01T00:00:00Z", NOW) == "2030-01-01T00:00:00.001Z"
    assert later_than(None, NOW) == "2026-03-04T05:06:07.891Z"
    without_modified = {"type": "malware", "id": "malware--1", "created": "2030-01-01T00:00:00Z"}
    assert revoked_version(without_modified, NOW)["modified"] == "2030-01-01T00:00:00.001Z"


def test_unversioned_objects_cannot_be_revoked() -> None:
    with pytest.raises(ValueError, match="cannot be revoked"):
        revoked_version({"type": "marking-definition", "id": "marking-definition--1"})
    with pytest.raises(ValueError, match="id and a type"):
        revoked_version({"name": "x"})


# -- bundles of objects ---------------------------------------------------------------------


class Serializable:
    id = "indicator--9"

    def serialize(self) -> str:
        return json.dumps({"type": "indicator", "id": self.id})


def test_a_list_of_objects_is_sent_as_a_new_bundle() -> None:
    sent = json.loads(encode_bundle([{"type": "indicator", "id": "indicator--1"}, Serializable()]))
    assert sent["type"] == "bundle" and sent["id"].startswith("bundle--")
    assert sent["objects"] == [
        {"type": "indicator", "id": "indicator--1"},
        {"type": "indicator", "id": "indicator--9"},
    ]
    assert json.loads(encode_bundle(()))["objects"] == []
    with pytest.raises(TypeError, match="cannot submit a list of int"):
        encode_bundle([1, 2])  # type: ignore[list-item]


# -- submit_many's tally ----------------------------------------------------------------------


def result(*outcomes: tuple[str, str], error: str | None = None) -> SubmitResult:
    results = []
    for index, (object_id, outcome) in enumerate(outcomes):
        rejection = None
        if outcome == "rejected":
            rejection = RejectedObject(object_id, "bad", "confidence", "0-100", index, "v")
        results.append(ObjectResult(object_id, "v", outcome, index, rejection))  # type: ignore[arg-type]
    return SubmitResult(
        accepted=[r.object_id for r in results if r.outcome == "accepted"],
        duplicates=[r.object_id for r in results if r.outcome == "duplicate"],
        rejected=[r.rejection for r in results if r.rejection is not None],
        results=results,
        error=error,
    )


def test_many_submission_batches_and_adds_up() -> None:
    objects = [{"type": "indicator", "id": f"indicator--{n}"} for n in range(7)]
    seen: list[SubmitProgress] = []
    run = ManySubmission(objects, 3, seen.append)
    bundles = list(run.bundles())
    assert [[o["id"] for o in b["objects"]] for b in bundles] == [
        ["indicator--0", "indicator--1", "indicator--2"],
        ["indicator--3", "indicator--4", "indicator--5"],
        ["indicator--6"],
    ]
    assert len({b["id"] for b in bundles}) == 3
    run.add(
        result(
            ("indicator--0", "accepted"),
            ("indicator--1", "duplicate"),
            ("indicator--2", "rejected"),
        )
    )
    run.add(result(error="bundle is not JSON"))
    run.add(result(("indicator--6", "accepted")))
    assert seen == [
        SubmitProgress(7, 3, 1, 1, 1, 7),
        SubmitProgress(7, 6, 1, 1, 1, 7),
        SubmitProgress(7, 7, 2, 1, 1, 7),
    ]
    summary = run.summary()
    assert summary.accepted == ["indicator--0", "indicator--6"]
    assert summary.duplicates == ["indicator--1"]
    assert [r.object_id for r in summary.rejected] == ["indicator--2"]
    assert summary.errors == [
        BatchError(1, "bundle is not JSON", ["indicator--3", "indicator--4", "indicator--5"])
    ]
    assert len(summary.results) == 4 and summary.batches == 3
    assert not summary.ok


def test_many_submission_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ManySubmission([], 0)
    with pytest.raises(TypeError, match="batch_size"):
        ManySubmission([], 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="submit\\(\\)"):
        ManySubmission({"type": "bundle", "objects": []})
    assert ManySubmission(iter([])).total is None
    assert list(ManySubmission([]).bundles()) == []


def test_progress_and_summary_models() -> None:
    assert SubmitProgress(10, 5, 5, 0, 0, 10).fraction == 0.5
    assert SubmitProgress(10, 5, 5, 0, 0, None).fraction is None
    assert SubmitSummary([], [], [], [], []).ok
    assert not SubmitSummary([], [], [], [BatchError(0, "x")], []).ok


# -- configuration of the async client -----------------------------------------------------


def test_async_client_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXCHANGE_TARGET", "exchange.example.org:443")
    monkeypatch.setenv("EXCHANGE_TOKEN", " s3cret ")
    monkeypatch.delenv("EXCHANGE_CA_FILE", raising=False)
    monkeypatch.delenv("EXCHANGE_KEY_FILE", raising=False)
    client = AsyncExchangeClient()
    assert client.target == "exchange.example.org:443"
    assert client._metadata == (("authorization", "Bearer s3cret"),)
    assert client.timeout == 60.0
    monkeypatch.setenv("EXCHANGE_CERT_FILE", str(tmp_path / "client.pem"))
    with pytest.raises(ValueError, match="key_file"):
        AsyncExchangeClient()
    with pytest.raises(ValueError, match="timeout"):
        AsyncExchangeClient(timeout=0)


def test_a_str_is_json_text_never_a_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's first mistake: ``client.submit("lure.json")``. A str is never opened
    (text passed on from elsewhere must not make the SDK send a local file); one that
    cannot be JSON is refused before anything is sent, pointing at pathlib.Path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lure.json").write_text('{"type": "bundle"}')
    with pytest.raises(ValidationError, match=r"pass pathlib\.Path\('lure\.json'\)") as caught:
        encode_bundle("lure.json")
    assert caught.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ValidationError, match=r"to submit a file, pass a pathlib\.Path"):
        encode_bundle("missing.json")
    assert encode_bundle(Path("lure.json")) == b'{"type": "bundle"}'
    # JSON text is sent as it is, leading blanks and all; the exchange judges it.
    assert encode_bundle('\n  {"type": "bundle"}') == b'\n  {"type": "bundle"}'

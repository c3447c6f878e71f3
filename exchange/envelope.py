"""How an accepted object travels on the bus.

The record value is the STIX object itself (so a partner's own Kafka consumer
reads plain STIX); the key is its STIX id (versions of one object stay ordered
on one partition); headers carry what routing and filtering need without
parsing the body. This is a public contract for Kafka consumers: see
docs/kafka.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from exchange.bus import BusRecord, ReadRecord
from exchange.model import Audience, StoredObject, Tlp, ValidObject

__all__ = ["HEADERS", "from_record", "to_records"]

HEADERS = (
    "stix-type",
    "stix-version",
    "spec-version",
    "tlp",
    "submitter",
    "submitter-identity",
    "accepted-at",
    "labels",
    "revoked",
    "exchange-seq",
    "audience",
    "topics",
)


def to_records(stored: StoredObject, topics: Sequence[str]) -> list[BusRecord]:
    """One record per topic; each says every topic the version went to, so that a
    subscriber reading several of them takes it from one (policy.delivers_from)."""
    obj = stored.obj
    headers = (
        ("stix-type", obj.object_type.encode()),
        ("stix-version", obj.version.encode()),
        ("spec-version", obj.spec_version.encode()),
        ("tlp", obj.tlp.value.encode()),
        ("submitter", stored.submitter.encode()),
        ("submitter-identity", obj.created_by_ref.encode()),
        ("accepted-at", repr(stored.accepted_at).encode()),
        ("labels", orjson.dumps(obj.labels)),
        ("revoked", b"true" if obj.revoked else b"false"),
        ("exchange-seq", str(stored.seq).encode()),
        ("audience", stored.audience.to_json()),
        ("topics", orjson.dumps(list(topics))),
    )
    key = obj.object_id.encode()
    return [BusRecord(topic=t, key=key, value=obj.body, headers=headers) for t in topics]


def from_record(record: ReadRecord) -> StoredObject:
    """Raises ValueError (or KeyError) for a record this exchange did not write."""
    h = {name: value for name, value in record.headers}
    tlp = Tlp(h["tlp"].decode())
    submitter = h["submitter"].decode()
    # Records from before audiences existed carry neither header: their audience
    # was the TLP alone, and they went to the one topic they are on.
    audience = (
        Audience.from_json(h["audience"])
        if "audience" in h
        else Audience(tlp=tlp, submitter=submitter)
    )
    topics = tuple(orjson.loads(h["topics"])) if "topics" in h else (record.topic,)
    return StoredObject(
        seq=int(h["exchange-seq"]),
        submitter=submitter,
        accepted_at=float(h["accepted-at"]),
        obj=ValidObject(
            object_id=record.key.decode(),
            object_type=h["stix-type"].decode(),
            version=h["stix-version"].decode(),
            created_by_ref=h["submitter-identity"].decode(),
            tlp=tlp,
            body=record.value,
            labels=tuple(orjson.loads(h["labels"])),
            revoked=h["revoked"] == b"true",
            spec_version=h["spec-version"].decode(),
        ),
        audience=audience,
        topics=topics,
    )

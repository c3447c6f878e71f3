"""What the audit log records, through the real server on both buses: each object of a
submission, each delivery, stream starts and ends, look-ups, registry changes and who
made them. Entries hold ids and digests, never bodies or secrets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient, NotFound

from exchange.audit.entries import Action, AuditEntry, AuditQuery
from exchange.audit.mirror import AUDIT_TOPIC
from exchange.model import Role, Tlp
from tests.helpers import ServerThread, bundle, indicator, settings_for, wait_until


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    srv = ServerThread(settings_for(tmp_path / "data", bootstrap)).start()
    yield srv
    srv.stop()


def entries(server: ServerThread, **query: Any) -> list[AuditEntry]:
    assert server.server is not None
    return server.run(server.server.store.audit_entries(AuditQuery(**query, limit=100_000)))


def flushed(server: ServerThread) -> bool:
    """Deliveries are recorded in batches: append what the recorder holds now."""
    assert server.server is not None
    server.run(server.server.recorder.flush())
    return True


def test_submission_deliveries_and_stream_are_recorded(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social")
    shared = indicator(ngo.identity, n=1, tlp=Tlp.GREEN)
    bad = dict(indicator(ngo.identity, n=2), confidence=150)
    with ExchangeClient(server.target, token=ngo.token) as c:
        result = c.submit(bundle([shared, bad]))
    (accepted,) = [r for r in result.results if r.outcome == "accepted"]
    assert accepted.receipt is not None

    got = server.drain(platform)
    assert [d.object_id for d in got] == [shared["id"]]
    # Recorded once the message holding it was written (or, if the subscriber left
    # meanwhile, once the write completed): shortly after it was received.
    wait_until(
        lambda: (
            flushed(server)
            and any(
                e.event.action is Action.DELIVER for e in entries(server, object_id=shared["id"])
            )
        ),
        30,
        what="the delivery to be recorded",
    )

    about = entries(server, object_id=shared["id"])
    submit = next(e for e in about if e.event.action is Action.SUBMIT)
    assert submit.index == accepted.receipt.log_index
    assert submit.leaf_hash == accepted.receipt.leaf_hash
    assert submit.event.actor == ngo.partner_id and submit.event.detail["outcome"] == "accepted"
    body = orjson.dumps(shared)
    assert submit.event.digest == hashlib.sha256(body).hexdigest()
    deliveries = [e for e in about if e.event.action is Action.DELIVER]
    assert {e.event.actor for e in deliveries} == {platform.partner_id}
    assert deliveries[0].event.owner == ngo.partner_id
    # The version received, with the digest of the body it had (the same as submitted).
    assert deliveries[0].event.objects == ((shared["id"], shared["modified"], submit.event.digest),)
    # The channel and when, never the recipient's cursor: the submitter reads this entry
    # too, and a cursor names the recipient's other topics (its communities) and offsets.
    detail = deliveries[0].event.detail
    assert set(detail) == {"channel", "last_at"} and detail["channel"] == "subscribe"
    last_at = detail["last_at"]
    assert isinstance(last_at, float) and deliveries[0].event.at <= last_at
    assert last_at < deliveries[0].event.at + 2
    assert got[0].cursor.encode() not in deliveries[0].data

    rejected = entries(server, object_id=bad["id"])
    assert [e.event.detail["outcome"] for e in rejected] == ["rejected"]
    assert rejected[0].event.detail["property"] == "confidence"

    # A stream's start and end (closed by the subscriber).
    with ExchangeClient(server.target, token=platform.token) as c:
        sub = c.subscribe(types=["indicator"], from_beginning=True)
        assert next(iter(sub)).object_id == shared["id"]
        sub.close()
    wait_until(
        lambda: flushed(server) and bool(entries(server, action="subscribe.end")),
        # At most a heartbeat (5 s) after the subscriber left, if the cancellation was lost.
        30,
        what="the end of the stream to be recorded",
    )
    (start,) = [e for e in entries(server, action="subscribe.start") if "types" in e.event.detail]
    assert start.event.actor == platform.partner_id and start.event.detail["types"] == ["indicator"]

    # No body and no token anywhere in the log.
    assert server.server is not None
    rows = server.run(server.server.store.audit_rows(0, 100_000))
    raw = b"".join(r.data for r in rows)
    assert body not in raw and ngo.token.encode() not in raw and platform.token.encode() not in raw


def test_look_ups_and_registry_changes_are_recorded(server: ServerThread) -> None:
    assert server.server is not None
    registry = server.server.registry
    ngo = server.add_partner("harbor-light")
    admin = server.add_partner("operator-desk", roles=frozenset({Role.ADMIN}))
    red = indicator(ngo.identity, tlp=Tlp.RED)
    with ExchangeClient(server.target, token=ngo.token) as c:
        c.submit(bundle([red]), recipients=[admin.partner_id])
    platform = server.add_partner("kestrel-social")
    with ExchangeClient(server.target, token=platform.token) as c, pytest.raises(NotFound):
        c.get(red["id"])
    (lookup,) = entries(server, action="lookup")
    assert lookup.event.actor == platform.partner_id and lookup.event.detail == {"found": False}

    server.run(registry.acting_as(admin.partner_id).add_community("sea-taskforce"))
    server.run(registry.join_community("sea-taskforce", ngo.partner_id))
    credential, _token = server.run(registry.issue_token(ngo.partner_id))
    server.run(registry.revoke_credential(ngo.partner_id, credential.credential_id))
    changes = [
        (e.event.action, e.event.actor, e.event.partner)
        for e in entries(server)
        if e.event.action.value.startswith(("community.", "credential."))
    ]
    assert changes == [
        (Action.COMMUNITY_ADD, admin.partner_id, ""),
        (Action.COMMUNITY_JOIN, "operator", ngo.partner_id),
        (Action.CREDENTIAL_ISSUE, "operator", ngo.partner_id),
        (Action.CREDENTIAL_REVOKE, "operator", ngo.partner_id),
    ]


@pytest.mark.kafka
def test_the_log_is_mirrored_to_the_audit_topic(tansu: str, tmp_path: Path) -> None:
    server = ServerThread(settings_for(tmp_path / "data", tansu)).start()
    try:
        _check_mirror(server)
    finally:
        server.stop()


def _check_mirror(server: ServerThread) -> None:
    assert server.server is not None
    ngo = server.add_partner("harbor-light")
    with ExchangeClient(server.target, token=ngo.token) as c:
        c.submit(bundle([indicator(ngo.identity)]))
    store, bus = server.server.store, server.server.bus
    size = server.run(store.audit_size())
    wait_until(
        lambda: server.run(store.audit_mirror_position()) >= size, what="the mirror to catch up"
    )

    async def read_back() -> list[bytes]:
        partitions = await bus.partitions(AUDIT_TOPIC)
        reader = await bus.open_reader({(AUDIT_TOPIC, p): None for p in partitions})
        got: list[bytes] = []
        try:
            while len(got) < size:
                batch = await reader.read(1000, 5.0)
                assert batch, "the audit topic holds fewer records than the log"
                got += [r.value for r in batch]
        finally:
            await reader.close()
        return got

    mirrored = server.run(read_back())
    rows = server.run(store.audit_rows(0, size))
    assert sorted(mirrored) == sorted(r.data for r in rows)

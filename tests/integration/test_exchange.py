"""The spine, end to end through real gRPC, on both buses: submit, fan out,
subscribe, resume."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_client import AuthenticationError, ExchangeClient, ValidationError
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from exchange.model import Tlp
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    mixed_indicators,
    settings_for,
    tlp_of,
    wait_until,
)

SHARED = {Tlp.CLEAR, Tlp.GREEN}


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    srv = ServerThread(settings_for(tmp_path / "data", bootstrap)).start()
    yield srv
    srv.stop()


@pytest.fixture
def ngo(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("harbor-light")


@pytest.fixture
def platform(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("kestrel-social", sector="technology")


def client(server: ServerThread, who: PartnerCredentials) -> ExchangeClient:
    return ExchangeClient(server.target, token=who.token)


def collect(server: ServerThread, who: PartnerCredentials, count: int, **kwargs: Any) -> list[Any]:
    """The first ``count`` deliveries of a subscription (fails after a deadline)."""
    got: list[Any] = []
    with client(server, who) as c:
        sub = c.subscribe(**kwargs)
        timer = threading.Timer(30.0, sub.cancel)
        timer.start()
        try:
            for delivery in sub:
                got.append(delivery)
                if len(got) >= count:
                    break
        finally:
            timer.cancel()
            sub.cancel()
    assert len(got) == count, f"expected {count} deliveries, got {len(got)}"
    return got


def test_other_partner_receives_exactly_clear_and_green(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    objects = mixed_indicators(ngo.identity, 60)
    with client(server, ngo) as c:
        result = c.submit(bundle(objects))
    assert result.ok and sorted(result.accepted) == sorted(o["id"] for o in objects)

    shared = [o for o in objects if tlp_of(o) in SHARED]
    got = collect(server, platform, len(shared), from_beginning=True)
    # Exactly these, each once (order is kept per object, not across topics).
    assert sorted(d.object_id for d in got) == sorted(o["id"] for o in shared)
    assert {d.tlp for d in got} <= {"clear", "green"}
    assert all(d.submitter == ngo.partner_id and d.submitter_identity == ngo.identity for d in got)

    # Nothing more arrives: a sentinel submitted last is the next delivery.
    sentinel = indicator(ngo.identity, n=999, tlp=Tlp.CLEAR)
    with client(server, ngo) as c:
        c.submit(bundle([sentinel]))
    after = collect(server, platform, 1, cursor=got[-1].cursor)
    assert after[0].object_id == sentinel["id"]

    # The submitter receives all of its own objects, every TLP.
    own = collect(server, ngo, len(objects) + 1, from_beginning=True)
    assert sorted(d.object_id for d in own) == sorted(o["id"] for o in [*objects, sentinel])


def test_delivered_object_is_what_was_submitted(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    hostile = indicator(
        ngo.identity,
        tlp=Tlp.GREEN,
        name="x'); DROP TABLE objects;-- \u202e <script>alert(1)</script>",
    )
    with client(server, ngo) as c:
        assert c.submit(orjson.dumps(bundle([hostile]))).accepted == [hostile["id"]]
    (d,) = collect(server, platform, 1, from_beginning=True)
    assert d.object == hostile
    assert d.object_type == "indicator" and d.version == hostile["modified"]


def test_missing_creator_and_tlp_are_stamped(server: ServerThread, ngo: PartnerCredentials) -> None:
    bare = indicator(None, tlp=None)
    with client(server, ngo) as c:
        assert c.submit(bundle([bare])).ok
    (d,) = collect(server, ngo, 1, from_beginning=True)
    assert d.object["created_by_ref"] == ngo.identity
    assert d.tlp == "amber"  # the partner's default
    assert tlp_of(d.object) is Tlp.AMBER


def test_duplicates_new_versions_and_provenance(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    first = indicator(ngo.identity, tlp=Tlp.GREEN)
    with client(server, ngo) as c:
        assert c.submit(bundle([first])).accepted == [first["id"]]
        again = c.submit(bundle([first]))
        assert again.duplicates == [first["id"]] and not again.accepted
        newer = dict(first, modified="2026-02-23T00:00:00.000Z", confidence=95)
        assert c.submit(bundle([newer])).accepted == [first["id"]]

    hijack = dict(first, created_by_ref=platform.identity, modified="2026-03-01T00:00:00.000Z")
    spoof = indicator(ngo.identity)
    with client(server, platform) as c:
        result = c.submit(bundle([hijack, spoof]))
    assert not result.accepted
    reasons = {r.object_id: r for r in result.rejected}
    assert reasons[first["id"]].property == "id"
    assert "creator" in reasons[first["id"]].reason
    assert reasons[spoof["id"]].property == "created_by_ref"

    # Both versions are delivered, in order; nothing of the rejected ones.
    got = collect(server, platform, 2, from_beginning=True)
    assert [(d.object_id, d.version) for d in got] == [
        (first["id"], first["modified"]),
        (first["id"], "2026-02-23T00:00:00.000Z"),
    ]


def test_bad_input_is_refused_and_changes_nothing(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    good = indicator(ngo.identity, tlp=Tlp.CLEAR)
    bad = indicator(ngo.identity, confidence=150)
    with client(server, ngo) as c:
        for raw in (b"{not json", b"[]", b"[" * 100_000 + b"]" * 100_000):
            with pytest.raises(ValidationError):
                c.submit(raw)
        result = c.submit(bundle([good, bad]))
        assert result.accepted == [good["id"]]
        (rejected,) = result.rejected
        assert rejected.object_id == bad["id"] and rejected.property == "confidence"
        # The server is still up and answering.
        assert c.submit(bundle([good])).duplicates == [good["id"]]
    got = collect(server, ngo, 1, from_beginning=True)
    assert got[0].object_id == good["id"]


def test_unknown_token_is_unauthenticated(server: ServerThread) -> None:
    with ExchangeClient(server.target, token="tix_wrong") as c, pytest.raises(AuthenticationError):
        c.submit(bundle([indicator(None)]))
    channel = grpc.insecure_channel(server.target)
    stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Submit(exchange_pb2.SubmitRequest(bundle=b"{}"), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    channel.close()


def test_live_tail_and_from_now(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    before = indicator(ngo.identity, n=1, tlp=Tlp.GREEN)
    with client(server, ngo) as c:
        c.submit(bundle([before]))
    wait_until(lambda: server.server is not None and server.server.relay.published >= 1)

    received: list[Any] = []
    with client(server, platform) as c:
        sub = c.subscribe()  # from now
        reader = threading.Thread(target=lambda: received.extend(itertools.islice(sub, 3)))
        reader.start()
        # The stream's first message (its start cursor) says it is established.
        wait_until(lambda: sub.last_cursor is not None, what="the subscription to start")
        live = [indicator(ngo.identity, n=i, tlp=Tlp.CLEAR) for i in range(10, 13)]
        with client(server, ngo) as s:
            for obj in live:
                s.submit(bundle([obj]))
        reader.join(30)
        sub.cancel()
    assert sorted(d.object_id for d in received) == sorted(o["id"] for o in live)


def test_filters_by_type_and_label(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    objs = [
        indicator(ngo.identity, n=1, labels=["trafficking:recruitment"]),
        indicator(ngo.identity, n=2, labels=["trafficking:payment"]),
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": "identity--0f8ad4a5-7ce2-4c59-9f3f-3a3f1d0d3f11",
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": "Fake agency",
            "identity_class": "organization",
            "labels": ["trafficking:payment"],
            "object_marking_refs": [indicator(None)["object_marking_refs"][0]],
        },
    ]
    with client(server, ngo) as c:
        assert c.submit(bundle(objs)).ok
    (d,) = collect(
        server,
        platform,
        1,
        from_beginning=True,
        types=["indicator"],
        labels=["trafficking:payment"],
    )
    assert d.object_id == objs[1]["id"]


def test_resume_from_cursor_no_gap_no_duplicate(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    objects = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(300)]
    with client(server, ngo) as c:
        c.submit(bundle(objects[:150]))
    first = collect(server, platform, 100, from_beginning=True)
    with client(server, ngo) as c:
        c.submit(bundle(objects[150:]))
    rest = collect(server, platform, 200, cursor=first[-1].cursor)
    ids = [d.object_id for d in first + rest]
    assert sorted(ids) == sorted(o["id"] for o in objects)


def test_accepted_objects_survive_a_restart(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    objects = [indicator(ngo.identity, n=i, tlp=Tlp.CLEAR) for i in range(20)]
    with client(server, ngo) as c:
        c.submit(bundle(objects[:10]))
    first = collect(server, platform, 5, from_beginning=True)
    restarted = server.restarted()
    try:
        with client(restarted, ngo) as c:
            c.submit(bundle(objects[10:]))
            assert c.submit(bundle(objects[:10])).duplicates == [o["id"] for o in objects[:10]]
        rest = collect(restarted, platform, 15, cursor=first[-1].cursor)
        assert sorted(d.object_id for d in first + rest) == sorted(o["id"] for o in objects)
    finally:
        restarted.stop()


def test_relay_repeats_are_delivered_once(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    """At-least-once relay: rows published again (as after a crash between the
    bus ack and the outbox delete) reach subscribers once."""
    objects = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(5)]
    with client(server, ngo) as c:
        c.submit(bundle(objects))
    assert server.server is not None
    relay = server.server.relay
    wait_until(lambda: relay.published >= 5, what="first publish")
    db = sqlite3.connect(server.settings.data_path / "exchange.sqlite3")
    with db:
        db.execute("INSERT INTO outbox SELECT seq FROM objects")
    db.close()
    relay.wake()
    wait_until(lambda: relay.published >= 10, what="second publish")
    sentinel = indicator(ngo.identity, n=99, tlp=Tlp.GREEN)
    with client(server, ngo) as c:
        c.submit(bundle([sentinel]))
    got = collect(server, platform, 6, from_beginning=True)
    assert sorted(d.object_id for d in got) == sorted(o["id"] for o in [*objects, sentinel])


def test_nobody_publishes_another_partners_identity(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    def identity_object(identity: str) -> dict[str, Any]:
        return {
            "type": "identity",
            "spec_version": "2.1",
            "id": identity,
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": "Harbor Light Alliance (impostor)",
            "identity_class": "organization",
        }

    with client(server, platform) as c:
        result = c.submit(bundle([identity_object(ngo.identity)]))
    assert [r.object_id for r in result.rejected] == [ngo.identity]
    with client(server, ngo) as c:
        assert c.submit(bundle([identity_object(ngo.identity)])).accepted == [ngo.identity]

"""Who may see what, through the real server on both buses: one readable test per
rule, credentials and roles. (The generated scenarios are in test_entitlements_property.py.)"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_client import (
    AuthenticationError,
    ExchangeClient,
    NotFound,
    PermissionDenied,
    Unavailable,
    ValidationError,
)
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from exchange.auth import new_token_credential
from exchange.model import PartnerKind, Role, Tlp
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
    stamp,
    wait_until,
)


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    srv = ServerThread(settings_for(tmp_path / "data", bootstrap)).start()
    yield srv
    srv.stop()


class Network:
    """The five partners of the corpus and two communities."""

    def __init__(self, server: ServerThread) -> None:
        self.ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
        self.social = server.add_partner("kestrel-social", kind=PartnerKind.TECH)
        self.ministry = server.add_partner("northgate-labour", kind=PartnerKind.GOVERNMENT)
        self.payments = server.add_partner("meridian-pay", kind=PartnerKind.TECH)
        self.regional = server.add_partner("ratco", kind=PartnerKind.INTERGOVERNMENTAL)
        self.taskforce = server.add_community(
            "sea-taskforce", self.ngo, self.social, self.ministry, self.regional
        )
        self.platforms = server.add_community("platform-safety", self.social, self.payments)
        self.everyone = [self.ngo, self.social, self.ministry, self.payments, self.regional]


@pytest.fixture
def net(server: ServerThread) -> Network:
    return Network(server)


def client(server: ServerThread, who: PartnerCredentials) -> ExchangeClient:
    return ExchangeClient(server.target, token=who.token)


def submit(
    server: ServerThread, who: PartnerCredentials, objects: list[dict[str, Any]], **audience: Any
) -> Any:
    with client(server, who) as c:
        return c.submit(bundle(objects), **audience)


def received(server: ServerThread, net: Network) -> dict[str, set[str]]:
    """partner id -> the object ids its subscription from the beginning delivers."""
    out: dict[str, set[str]] = {}
    for who in net.everyone:
        deliveries = server.drain(who)
        ids = [d.object_id for d in deliveries]
        assert len(ids) == len(set(ids)), f"{who.partner_id} received an object twice"
        out[who.partner_id] = set(ids)
    return out


def test_each_partner_receives_exactly_what_the_rules_allow(
    server: ServerThread, net: Network
) -> None:
    ngo = net.ngo.identity
    green = indicator(ngo, n=1, tlp=Tlp.GREEN)
    amber_own = indicator(ngo, n=2, tlp=Tlp.AMBER)  # nobody named: the NGO's communities
    amber_platforms = indicator(ngo, n=3, tlp=Tlp.AMBER)
    strict = indicator(ngo, n=4, tlp=Tlp.AMBER_STRICT)
    red = indicator(ngo, n=5, tlp=Tlp.RED)
    not_to_gov = indicator(ngo, n=6, tlp=Tlp.GREEN)
    amber_not_to_gov = indicator(ngo, n=7, tlp=Tlp.AMBER)
    assert submit(server, net.ngo, [green, amber_own]).ok
    assert submit(server, net.ngo, [amber_platforms], communities=[net.platforms]).ok
    assert submit(server, net.ngo, [strict], recipients=[net.payments.partner_id]).ok
    assert submit(server, net.ngo, [red], recipients=[net.ministry.partner_id]).ok
    assert submit(server, net.ngo, [not_to_gov], exclude_kinds=["government"]).ok
    assert submit(
        server,
        net.ngo,
        [amber_not_to_gov],
        communities=[net.taskforce],
        exclude_kinds=["government", "intergovernmental"],
    ).ok

    got = received(server, net)
    ids = {name: o["id"] for name, o in locals().items() if isinstance(o, dict) and "id" in o}
    expected = {
        net.ngo.partner_id: set(ids.values()),
        net.social.partner_id: {ids[n] for n in ("green", "amber_own", "amber_platforms",
                                                  "not_to_gov", "amber_not_to_gov")},
        net.ministry.partner_id: {ids[n] for n in ("green", "amber_own", "red")},
        net.payments.partner_id: {ids[n] for n in ("green", "amber_platforms", "strict",
                                                    "not_to_gov")},
        net.regional.partner_id: {ids[n] for n in ("green", "amber_own", "not_to_gov")},
    }  # fmt: skip
    assert got == expected


def test_red_without_recipients_is_refused_and_unknown_names_are_invalid(
    server: ServerThread, net: Network
) -> None:
    red = indicator(net.ngo.identity, tlp=Tlp.RED)
    result = submit(server, net.ngo, [red])
    assert result.rejected and not result.accepted
    (rejection,) = result.rejected
    assert rejection.property == "object_marking_refs" and "recipient" in rejection.expected

    with pytest.raises(ValidationError, match="unknown community no-such-group"):
        submit(server, net.ngo, [red], communities=["no-such-group"])
    with pytest.raises(ValidationError, match="unknown partner ghost-partner"):
        submit(server, net.ngo, [red], recipients=["ghost-partner"])
    # Nothing of a refused submission was stored.
    assert red["id"] not in {d.object_id for d in server.drain(net.ngo)}


def test_a_sighting_travels_back_to_the_indicators_creator(
    server: ServerThread, net: Network
) -> None:
    lead = indicator(net.ministry.identity, tlp=Tlp.AMBER_STRICT)
    assert submit(server, net.ministry, [lead], recipients=[net.social.partner_id]).ok
    sighting = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": f"sighting--{uuid.uuid4()}",
        "created": stamp(),
        "modified": stamp(),
        "created_by_ref": net.social.identity,
        "sighting_of_ref": lead["id"],
        "count": 3,
        "object_marking_refs": ["marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"],
    }  # TLP:RED, nobody named: it goes to the indicator's creator only.
    result = submit(server, net.social, [sighting])
    assert result.accepted == [sighting["id"]], result
    got = received(server, net)
    assert sighting["id"] in got[net.ministry.partner_id]
    assert all(
        sighting["id"] not in got[p.partner_id] for p in (net.ngo, net.payments, net.regional)
    )


def test_a_revocation_reaches_everyone_who_received_an_earlier_version(
    server: ServerThread, net: Network
) -> None:
    first = indicator(net.ngo.identity, tlp=Tlp.GREEN)
    assert submit(server, net.ngo, [first]).ok
    withdrawn = dict(
        first,
        modified="2026-03-01T00:00:00.000Z",
        revoked=True,
        object_marking_refs=["marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"],
    )
    result = submit(server, net.ngo, [withdrawn], recipients=[net.ministry.partner_id])
    (accepted,) = result.results
    assert accepted.outcome == "accepted"
    assert "keeps the wider audience" in accepted.notice
    for who in net.everyone:
        versions = [
            (d.version, d.object_id) for d in server.drain(who) if d.object_id == first["id"]
        ]
        assert versions == [(first["modified"], first["id"]), (withdrawn["modified"], first["id"])]


def test_look_ups_follow_the_policy(server: ServerThread, net: Network) -> None:
    red = indicator(net.ngo.identity, tlp=Tlp.RED)
    assert submit(server, net.ngo, [red], recipients=[net.ministry.partner_id]).ok
    with client(server, net.ministry) as c:
        assert c.get(red["id"]).object_id == red["id"]
    absent_id = f"indicator--{uuid.uuid4()}"
    with client(server, net.social) as c:
        with pytest.raises(NotFound) as hidden:
            c.get(red["id"])
        with pytest.raises(NotFound) as absent:
            c.get(absent_id)
    with client(server, net.social) as c, pytest.raises(ValidationError, match="at most 256"):
        c.get("indicator--" + "0" * 100_000)
    # The same answer for "hidden" and "absent": a look-up reveals nothing.
    assert str(hidden.value).replace(red["id"], "ID") == str(absent.value).replace(absent_id, "ID")


def test_roles_are_required_and_named(server: ServerThread) -> None:
    submit_only = server.add_partner("hotline", roles=frozenset({Role.SUBMIT}))
    read_only = server.add_partner("observer", roles=frozenset({Role.SUBSCRIBE}))
    with client(server, submit_only) as c, pytest.raises(PermissionDenied, match="'subscribe'"):
        next(iter(c.subscribe()))
    with client(server, read_only) as c, pytest.raises(PermissionDenied, match="'submit'"):
        c.submit(bundle([indicator(read_only.identity)]))


def test_a_revoked_token_fails_the_next_call_and_ends_an_open_stream(
    server: ServerThread, net: Network
) -> None:
    assert server.server is not None
    store = server.server.store
    second, token = new_token_credential(net.social.partner_id)
    server.run(store.add_credential(second))
    with ExchangeClient(server.target, token=token) as c:
        sub = c.subscribe()
        ended: list[BaseException] = []

        def consume() -> None:
            try:
                for _ in sub:
                    pass
            except BaseException as exc:
                ended.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        # The stream is established once the first message arrived (last_cursor set).
        _wait(lambda: sub.last_cursor is not None, "the subscription to start")
        server.run(store.revoke_credential(net.social.partner_id, second.credential_id, 1.0))
        reader.join(15)
        assert not reader.is_alive(), "the open stream did not end after revocation"
        assert ended and isinstance(ended[0], AuthenticationError), ended
        assert "revoked" in str(ended[0])
        with pytest.raises(AuthenticationError, match="revoked"):
            c.submit(bundle([indicator(net.social.identity)]))
    # The partner's other token still works.
    assert submit(server, net.social, [indicator(net.social.identity)]).ok


def test_a_disabled_partner_receives_nothing(server: ServerThread, net: Network) -> None:
    assert server.server is not None
    current = server.partner(net.payments)
    server.run(server.server.store.update_partner(dataclasses.replace(current, disabled=True)))
    with client(server, net.payments) as c, pytest.raises(PermissionDenied, match="disabled"):
        next(iter(c.subscribe(from_beginning=True)))


def test_joining_a_community_ends_the_stream_and_resuming_brings_its_objects(
    server: ServerThread, net: Network
) -> None:
    shared = indicator(net.ngo.identity, tlp=Tlp.AMBER)
    assert submit(server, net.ngo, [shared], communities=[net.taskforce]).ok
    assert shared["id"] not in {d.object_id for d in server.drain(net.payments)}
    with client(server, net.payments) as c:
        sub = c.subscribe(from_beginning=True, reconnect=False)
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                for _ in sub:
                    pass
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        _wait(lambda: sub.last_cursor is not None, "the subscription to start")
        assert server.server is not None
        server.run(server.server.store.join_community(net.taskforce, net.payments.partner_id))
        reader.join(15)
        assert not reader.is_alive() and errors, "the stream did not end after joining"
        assert "communities changed" in str(errors[0])
        # Marked as a request to resume (trailing metadata), not an outage.
        assert isinstance(errors[0], Unavailable) and errors[0].resume_requested
        # Resuming from the last cursor brings what the community shared before.
        resumed = c.subscribe(cursor=sub.last_cursor)
        timer = threading.Timer(20.0, resumed.close)
        timer.start()
        try:
            first = next(iter(resumed))
        finally:
            timer.cancel()
            resumed.close()
        assert first.object_id == shared["id"]


def _wait(condition: Any, what: str) -> None:
    wait_until(condition, 15.0, what)


def test_grpc_status_codes(server: ServerThread, net: Network) -> None:
    """The codes partners' own gRPC clients see (the SDK maps them to its errors)."""
    red = indicator(net.ngo.identity, tlp=Tlp.RED)
    with grpc.insecure_channel(server.target) as channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(
                exchange_pb2.SubmitRequest(
                    bundle=orjson.dumps(bundle([red])),
                    audience=exchange_pb2.Audience(communities=["nowhere"]),
                ),
                metadata=(("authorization", f"Bearer {net.ngo.token}"),),
            )
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "nowhere" in (info.value.details() or "")


def test_a_red_object_is_revoked_without_naming_its_recipients_again(
    server: ServerThread, net: Network
) -> None:
    red = indicator(net.ngo.identity, tlp=Tlp.RED)
    assert submit(server, net.ngo, [red], recipients=[net.ministry.partner_id]).ok
    with client(server, net.ngo) as c:
        assert c.revoke(red["id"]).accepted == [red["id"]]
    versions = [d for d in server.drain(net.ministry) if d.object_id == red["id"]]
    assert len(versions) == 2 and orjson.loads(versions[-1].object)["revoked"] is True
    assert red["id"] not in {d.object_id for d in server.drain(net.social)}

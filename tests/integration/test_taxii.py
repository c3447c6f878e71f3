"""TAXII 2.1 through real clients (taxii2-client, stix2) against a server in a thread:
discovery, collections, paging, look-ups, versions, manifest, add objects and status,
and that a partner's TAXII read collection equals its Subscribe(from_beginning) stream."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import stix2
from exchange_client import ExchangeClient
from stix2validator import ValidationOptions, validate_instance
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from exchange.audit.entries import Action, AuditQuery
from exchange.model import PartnerKind, Role, Tlp
from exchange.taxii._collections import INBOX_ID, RECEIVED_ID
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
)

MEDIA = "application/taxii+json;version=2.1"
# taxii2-client endpoints a test opened (they hold connections).
OPENED: list[Any] = []


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    settings = settings_for(tmp_path / "data", bootstrap, taxii={"listen": "127.0.0.1:0"})
    srv = ServerThread(settings).start()
    yield srv
    # taxii2-client keeps a connection per endpoint object: closed here, not by the GC.
    while OPENED:
        OPENED.pop().close()
    srv.stop()


def base(server: ServerThread) -> str:
    assert server.server is not None and server.server.taxii is not None
    return f"http://127.0.0.1:{server.server.taxii.port}"


def collection_url(server: ServerThread, collection_id: str) -> str:
    return f"{base(server)}/exchange/collections/{collection_id}/"


def reader(server: ServerThread, who: PartnerCredentials, collection_id: str) -> Collection:
    collection = Collection(
        collection_url(server, collection_id), user=who.partner_id, password=who.token
    )
    OPENED.append(collection)
    return collection


def submit(
    server: ServerThread, who: PartnerCredentials, objects: list[dict[str, Any]], **audience: Any
) -> None:
    with ExchangeClient(server.target, token=who.token) as c:
        result = c.submit(bundle(objects), **audience)
    assert len(result.accepted) == len(objects), result


def taxii_read(
    server: ServerThread,
    who: PartnerCredentials,
    collection_id: str = RECEIVED_ID,
    per_request: int = 7,
    **filters: Any,
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for page in as_pages(
        reader(server, who, collection_id).get_objects, per_request=per_request, **filters
    ):
        got += page.get("objects", [])
    return got


def test_discovery_api_root_and_collections(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    server.add_community("sea-taskforce", ngo)
    found = Server(f"{base(server)}/taxii2/", user=ngo.partner_id, password=ngo.token)
    OPENED.append(found)
    assert found.title
    assert len(found.api_roots) == 1
    root: ApiRoot = found.api_roots[0]
    assert MEDIA in root.versions
    by_title = {c.title: c for c in root.collections}
    assert set(by_title) == {"Received", "Inbox", "Community sea-taskforce"}
    assert by_title["Received"].can_read and not by_title["Received"].can_write
    assert by_title["Inbox"].can_write and not by_title["Inbox"].can_read
    assert (
        by_title["Community sea-taskforce"].can_read
        and by_title["Community sea-taskforce"].can_write
    )
    # Metrics by route pattern, as the gRPC calls are counted by method.
    assert server.server is not None
    registry = server.server.metrics.registry
    labels = {"method": "GET", "route": "/exchange/collections/", "status": "200"}
    assert registry.get_sample_value("exchange_taxii_requests_total", labels) == 1


def test_read_write_versions_manifest_and_status(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    social = server.add_partner("kestrel-social", kind=PartnerKind.TECH)
    inbox = reader(server, ngo, INBOX_ID)
    first = indicator(ngo.identity, n=1, tlp=Tlp.GREEN)
    later = dict(first, modified="2026-06-01T00:00:00.000Z")
    bad = indicator(ngo.identity, n=2, pattern="[not a pattern")
    status = inbox.add_objects({"objects": [first, bad]}, wait_for_completion=False)
    assert status.status == "complete"
    assert status.success_count == 1 and status.failure_count == 1
    assert status.failures[0]["id"] == bad["id"]
    assert "pattern" in status.failures[0]["message"]
    status.refresh()  # GET status by id
    assert status.total_count == 2
    inbox.add_objects({"objects": [later]})
    server.wait_published()

    received = reader(server, social, RECEIVED_ID)
    latest = received.get_object(first["id"])["objects"]
    assert [o["modified"] for o in latest] == ["2026-06-01T00:00:00.000Z"]
    versions = received.object_versions(first["id"])["versions"]
    assert versions == [first["modified"], later["modified"]]
    every = received.get_objects(version="all")["objects"]
    assert [o["id"] for o in every] == [first["id"], first["id"]]
    firsts = received.get_objects(version="first")["objects"]
    assert [o["modified"] for o in firsts] == [first["modified"]]
    manifest = received.get_manifest()["objects"]
    assert [(m["id"], m["version"]) for m in manifest] == [(first["id"], later["modified"])]
    for obj in every:
        assert validate_instance(obj, ValidationOptions(version="2.1")).is_valid

    # The object, with its content, reached gRPC subscribers too.
    delivered = server.drain(social)
    assert [(d.object_id, d.version) for d in delivered] == [
        (first["id"], first["modified"]),
        (first["id"], later["modified"]),
    ]
    # Nobody else reads the NGO's status.
    status_url = f"{base(server)}/exchange/status/{status.id}/"
    accept = {"Accept": MEDIA}
    mine = requests.get(status_url, headers=accept, auth=(ngo.partner_id, ngo.token), timeout=10)
    assert mine.status_code == 200
    theirs = requests.get(
        status_url, headers=accept, auth=(social.partner_id, social.token), timeout=10
    )
    assert theirs.status_code == 404


def test_stix2_taxii_collection_sink_and_source(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    objects = [indicator(ngo.identity, n=i) for i in range(3)]
    sink = stix2.TAXIICollectionSink(reader(server, ngo, INBOX_ID))
    sink.add([stix2.parse(o, allow_custom=False) for o in objects])
    server.wait_published()
    source = stix2.TAXIICollectionSource(reader(server, ngo, RECEIVED_ID))
    got = source.get(objects[1]["id"])
    assert got is not None and got.id == objects[1]["id"]
    assert {o.id for o in source.query([stix2.Filter("type", "=", "indicator")])} == {
        o["id"] for o in objects
    }


def test_taxii_read_equals_subscribe_from_beginning(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    social = server.add_partner("kestrel-social", kind=PartnerKind.TECH)
    ministry = server.add_partner("northgate-labour", kind=PartnerKind.GOVERNMENT)
    payments = server.add_partner("meridian-pay", kind=PartnerKind.TECH)
    taskforce = server.add_community("sea-taskforce", ngo, social, ministry)
    server.add_community("platform-safety", social, payments)
    ngo_amber = [indicator(ngo.identity, n=i, tlp=Tlp.AMBER) for i in range(5)]
    submit(server, ngo, ngo_amber, communities=[taskforce], exclude_kinds=[PartnerKind.GOVERNMENT])
    submit(
        server, ngo, [indicator(ngo.identity, n=10, tlp=Tlp.RED)], recipients=[payments.partner_id]
    )
    submit(server, social, [indicator(social.identity, n=i, tlp=Tlp.AMBER) for i in range(20, 24)])
    submit(
        server, ministry, [indicator(ministry.identity, n=i, tlp=Tlp.GREEN) for i in range(30, 33)]
    )
    revised = dict(ngo_amber[0], modified="2026-06-01T00:00:00.000Z", revoked=True)
    submit(server, ngo, [revised], communities=[taskforce])
    for who in (ngo, social, ministry, payments):
        streamed = [(d.object_id, d.version) for d in server.drain(who)]
        read = [(o["id"], o["modified"]) for o in taxii_read(server, who, version="all")]
        # The same versions; the stream's order is per topic, TAXII's the acceptance order.
        assert sorted(read) == sorted(streamed), who.partner_id
        assert len(set(read)) == len(read)
        assert streamed  # every partner receives something here
    # A revoked version is listed among the versions, and is the latest.
    versions = reader(server, social, RECEIVED_ID).object_versions(revised["id"])["versions"]
    assert versions == [ngo_amber[0]["modified"], revised["modified"]]
    [latest] = reader(server, social, RECEIVED_ID).get_object(revised["id"])["objects"]
    assert latest["revoked"] is True


def test_paging_while_objects_are_added(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    submit(server, ngo, [indicator(ngo.identity, n=i) for i in range(25)])
    server.wait_published()
    collection = reader(server, ngo, RECEIVED_ID)
    seen: list[str] = []
    page = collection.get_objects(limit=10)
    added = 0
    while True:
        seen += [o["id"] for o in page.get("objects", [])]
        if added < 3:
            submit(server, ngo, [indicator(ngo.identity, n=100 + j + 10 * added) for j in range(4)])
            server.wait_published()
            added += 1
        if not page.get("more"):
            break
        page = collection.get_objects(limit=10, next=page["next"])
    assert len(seen) == len(set(seen)) == 25 + 12


def test_unauthenticated_forbidden_and_not_found(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    reader_only = server.add_partner("watcher", roles=frozenset({Role.SUBSCRIBE}))
    outsider = server.add_partner("outsider")
    server.add_community("sea-taskforce", ngo)
    secret = indicator(ngo.identity, n=1, tlp=Tlp.AMBER)
    submit(server, ngo, [secret])
    server.wait_published()
    url = f"{base(server)}/exchange/collections/"
    accept = {"Accept": MEDIA}

    response = requests.get(url, headers=accept, timeout=10)
    assert response.status_code == 401
    assert "Basic" in response.headers["WWW-Authenticate"]
    assert response.headers["Content-Type"] == MEDIA
    assert "Server" not in response.headers  # nothing about the stack behind it
    assert response.json()["http_status"] == "401"
    assert (
        requests.get(
            url, headers=accept, auth=(ngo.partner_id, "tix_wrong"), timeout=10
        ).status_code
        == 401
    )
    assert (
        requests.get(
            url, headers=accept, auth=(outsider.partner_id, ngo.token), timeout=10
        ).status_code
        == 401
    )
    bearer = {**accept, "Authorization": f"Bearer {ngo.token}"}
    assert requests.get(url, headers=bearer, timeout=10).status_code == 200

    outsider_auth = (outsider.partner_id, outsider.token)
    # The community's collection is not the outsider's: 404, as for no collection at all.
    community = next(
        c
        for c in requests.get(
            url, headers=accept, auth=(ngo.partner_id, ngo.token), timeout=10
        ).json()["collections"]
        if c["title"].startswith("Community")
    )
    for missing in (community["id"], str(uuid.uuid4())):
        answer = requests.get(
            f"{url}{missing}/objects/", headers=accept, auth=outsider_auth, timeout=10
        )
        assert answer.status_code == 404
        assert answer.json()["http_status"] == "404"
    # An object it may not see is answered as one that does not exist.
    hidden = requests.get(
        f"{url}{RECEIVED_ID}/objects/{secret['id']}/",
        headers=accept,
        auth=outsider_auth,
        timeout=10,
    )
    absent = requests.get(
        f"{url}{RECEIVED_ID}/objects/indicator--{uuid.uuid4()}/",
        headers=accept,
        auth=outsider_auth,
        timeout=10,
    )
    assert hidden.status_code == absent.status_code == 404
    # Inbox is write only; a partner without the submit role may not write.
    assert (
        requests.get(
            f"{url}{INBOX_ID}/objects/", headers=accept, auth=outsider_auth, timeout=10
        ).status_code
        == 403
    )
    post = requests.post(
        f"{url}{INBOX_ID}/objects/",
        headers={**accept, "Content-Type": MEDIA},
        data=orjson.dumps({"objects": [indicator(reader_only.identity)]}),
        auth=(reader_only.partner_id, reader_only.token),
        timeout=10,
    )
    assert post.status_code == 403


def test_bad_input_gets_taxii_errors(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    auth = (ngo.partner_id, ngo.token)
    objects = f"{base(server)}/exchange/collections/{RECEIVED_ID}/objects/"
    inbox = f"{base(server)}/exchange/collections/{INBOX_ID}/objects/"
    accept = {"Accept": MEDIA}

    def error(response: requests.Response, status: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == MEDIA
        body = response.json()
        assert body["http_status"] == str(status)
        return str(body["description"])

    assert "Accept" in error(
        requests.get(objects, headers={"Accept": "application/json"}, auth=auth, timeout=10), 406
    )
    assert "next" in error(
        requests.get(objects, params={"next": "garbage"}, headers=accept, auth=auth, timeout=10),
        400,
    )
    assert "limit" in error(
        requests.get(objects, params={"limit": "-3"}, headers=accept, auth=auth, timeout=10), 400
    )
    huge = requests.get(
        objects, params={"limit": str(10**30)}, headers=accept, auth=auth, timeout=10
    )
    assert huge.status_code == 200
    assert "added_after" in error(
        requests.get(
            objects, params={"added_after": "yesterday"}, headers=accept, auth=auth, timeout=10
        ),
        400,
    )
    assert "match[version]" in error(
        requests.get(
            objects, params={"match[version]": "newest"}, headers=accept, auth=auth, timeout=10
        ),
        400,
    )
    assert "Content-Type" in error(
        requests.post(
            inbox,
            data=b"{}",
            headers={**accept, "Content-Type": "application/json"},
            auth=auth,
            timeout=10,
        ),
        415,
    )
    post = {**accept, "Content-Type": MEDIA}
    assert "JSON" in error(
        requests.post(inbox, data=b"{not json", headers=post, auth=auth, timeout=10), 400
    )
    assert "envelope" in error(
        requests.post(inbox, data=b'{"objects": 3}', headers=post, auth=auth, timeout=10), 400
    )
    assert "bytes" in error(
        requests.post(inbox, data=b" " * (20 * 1024 * 1024), headers=post, auth=auth, timeout=30),
        413,
    )
    assert "limit" in error(
        requests.get(objects, params={"limit": "\u00b2"}, headers=accept, auth=auth, timeout=10),
        400,
    )
    refused = requests.delete(objects, headers=accept, auth=auth, timeout=10)
    error(refused, 405)
    assert refused.json()["title"] == "Method Not Allowed"
    assert "GET" in refused.headers["Allow"]
    deep = b'{"objects":[{"type":"indicator","x_deep":' + b"[" * 400 + b"]" * 400 + b"}]}"
    assert "nested" in error(
        requests.post(inbox, data=deep, headers=post, auth=auth, timeout=10), 400
    )
    big_header = requests.get(
        objects, headers={**accept, "X-Filler": "x" * (10 * 1024 * 1024)}, auth=auth, timeout=30
    )
    assert "header" in error(big_header, 431)
    assert "aiohttp" not in big_header.headers.get("Server", "")
    # Nothing was stored, and the server still answers.
    assert requests.get(objects, headers=accept, auth=auth, timeout=10).json()["objects"] == []


def test_reads_are_audited_like_their_grpc_twins(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light", kind=PartnerKind.NGO)
    social = server.add_partner("kestrel-social", kind=PartnerKind.TECH)
    shared = indicator(ngo.identity, n=1)
    submit(server, ngo, [shared])
    server.wait_published()
    received = reader(server, social, RECEIVED_ID)
    assert [o["id"] for o in received.get_objects()["objects"]] == [shared["id"]]
    received.get_object(shared["id"])
    missing = f"indicator--{uuid.uuid4()}"
    with pytest.raises(requests.HTTPError):
        received.get_object(missing)
    assert server.server is not None
    store, recorder = server.server.store, server.server.recorder
    server.run(recorder.flush())

    def entries(action: Action) -> list[Any]:
        query = AuditQuery(partner=social.partner_id, action=str(action))
        return [e.event for e in server.run(store.audit_entries(query))]

    delivered = entries(Action.DELIVER)
    assert delivered and all(e.detail.get("channel") == "taxii" for e in delivered)
    assert any(shared["id"] in (listed[0] for listed in e.objects) for e in delivered)
    lookups = {(e.object_id, e.detail["found"]) for e in entries(Action.LOOKUP)}
    assert (shared["id"], True) in lookups
    assert (missing, False) in lookups


def test_connections_over_the_limit_are_closed_and_others_still_served(tmp_path: Path) -> None:
    """Sockets opened and left idle, from anyone, hold at most taxii.max_connections:
    one more is closed at once, without an answer, and once one of them goes a new
    connection is served again."""
    settings = settings_for(
        tmp_path / "data", taxii={"listen": "127.0.0.1:0", "max_connections": 3}
    )
    srv = ServerThread(settings).start()
    held: list[socket.socket] = []
    try:
        ngo = srv.add_partner("ngo")
        port = srv.server.taxii.port  # type: ignore[union-attr]
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        # The server has registered them once one of them is answered.
        held[0].sendall(
            b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\nAccept: " + MEDIA.encode() + b"\r\n\r\n"
        )
        assert held[0].recv(100).startswith(b"HTTP/1.1 401")
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.sendall(b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # closed, nothing answered
            assert extra.recv(100) == b""
        extra.close()
        held.pop().close()
        url = f"http://127.0.0.1:{port}/taxii2/"
        deadline = time.monotonic() + 10
        while True:  # the freed slot is seen once the server notices the close
            try:
                answer = requests.get(
                    url, headers={"Accept": MEDIA}, auth=(ngo.partner_id, ngo.token), timeout=10
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "no connection was served again"
                time.sleep(0.05)
        assert answer.status_code == 200
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_pages_do_not_tell_that_a_hidden_version_exists(server: ServerThread) -> None:
    """`more` and `next` of a page depend only on what the caller may see: asking for
    someone else's RED object by id, one version a page, answers as for an id nobody
    used; as do a limit=1 page over one's own objects followed by hidden ones."""
    ngo = server.add_partner("harbor-light")
    bank = server.add_partner("meridian-pay")
    prober = server.add_partner("curious-member")
    secret = indicator(ngo.identity, n=1, tlp=Tlp.RED)
    versions = [secret] + [
        dict(secret, modified=f"2026-06-0{day}T00:00:00.000Z") for day in range(2, 6)
    ]
    for version in versions:
        submit(server, ngo, [version], recipients=[bank.partner_id])
    mine = indicator(prober.identity, n=2)
    submit(server, prober, [mine])
    for version in versions:  # hidden versions after the prober's own object
        submit(
            server,
            ngo,
            [dict(version, id=f"indicator--{uuid.uuid4()}")],
            recipients=[bank.partner_id],
        )
    server.wait_published()
    auth = (prober.partner_id, prober.token)
    url = collection_url(server, RECEIVED_ID)
    for endpoint in ("objects/", "manifest/"):
        answers = []
        for wanted in (secret["id"], f"indicator--{uuid.uuid4()}"):
            response = requests.get(
                url + endpoint,
                params={"match[id]": wanted, "match[version]": "all", "limit": "1"},
                headers={"Accept": MEDIA},
                auth=auth,
                timeout=10,
            )
            assert response.status_code == 200
            answers.append(response.json())
        assert answers[0] == answers[1], endpoint
        assert answers[0]["more"] is False and "next" not in answers[0]
    own = requests.get(
        url + "objects/", params={"limit": "1"}, headers={"Accept": MEDIA}, auth=auth, timeout=10
    ).json()
    assert [o["id"] for o in own["objects"]] == [mine["id"]]
    assert own["more"] is False and "next" not in own


def test_one_address_holds_at_most_its_share_of_connections(tmp_path: Path) -> None:
    """taxii.max_connections_per_address: sockets from one address over it are closed
    at once; another address is still served."""
    taxii = {"listen": "127.0.0.1:0", "max_connections": 10, "max_connections_per_address": 2}
    srv = ServerThread(settings_for(tmp_path / "data", taxii=taxii)).start()
    held: list[socket.socket] = []
    request = b"GET /taxii2/ HTTP/1.1\r\nHost: x\r\nAccept: " + MEDIA.encode() + b"\r\n\r\n"
    try:
        port = srv.server.taxii.port  # type: ignore[union-attr]
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        held[1].sendall(request)
        assert held[1].recv(100).startswith(b"HTTP/1.1 401")  # both are registered now
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        extra.sendall(request)
        with contextlib.suppress(ConnectionResetError):  # closed, nothing answered
            assert extra.recv(100) == b""
        extra.close()
        other = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)
        )
        held.append(other)
        other.sendall(request)
        assert other.recv(100).startswith(b"HTTP/1.1 401")
    finally:
        for s in held:
            s.close()
        srv.stop()

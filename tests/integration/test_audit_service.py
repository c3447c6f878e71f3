"""The AuditService against a real server: receipts that verify offline against a
later signed checkpoint, who may read which entries, VerifyLog's role, proofs
checked with an independent RFC 6962 implementation (tests/rfc6962.py), every
call recorded once, precise and bounded refusals, and pages bounded by bytes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_client import (
    AuthenticationError,
    ExchangeClient,
    InclusionProof,
    PermissionDenied,
    Receipt,
    ReceiptError,
    ValidationError,
    verify_receipt,
)
from exchange_protocol import merkle
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import audit_pb2_grpc as audit_grpc

from exchange.audit.entries import Action, Event
from exchange.audit.signer import Signer
from exchange.model import Role, Tlp
from exchange.services.audit import MAX_PAGE_BYTES
from tests import rfc6962
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
    wait_until,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(settings_for(tmp_path / "data")).start()
    yield srv
    srv.stop()


@pytest.fixture
def ngo(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("harbor-light")


@pytest.fixture
def platform(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("kestrel-social", sector="technology")


@pytest.fixture
def auditor(server: ServerThread) -> PartnerCredentials:
    roles = frozenset({Role.AUDIT})
    return server.add_partner("oversight-board", sector="government-national", roles=roles)


def client(server: ServerThread, who: PartnerCredentials) -> ExchangeClient:
    return ExchangeClient(server.target, token=who.token)


def public_key(server: ServerThread) -> str:
    """The key as the operator hands it out (not as the server says it over the API)."""
    return Signer.load(server.settings.signing_key_path).public_key_pem


def submit(server: ServerThread, who: PartnerCredentials, count: int, **kw: Any) -> list[str]:
    objects = [indicator(who.identity, n=n, **kw) for n in range(count)]
    with client(server, who) as c:
        result = c.submit(bundle(objects))
    assert result.ok and len(result.accepted) == count
    return [o["id"] for o in objects]


def everything(server: ServerThread, auditor: PartnerCredentials) -> list[Any]:
    with client(server, auditor) as c:
        return list(c.audit_entries())


# -- receipts ---------------------------------------------------------------------------------


def test_a_receipt_verifies_offline_against_a_later_checkpoint(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    objects = [indicator(ngo.identity, n=n) for n in range(3)]
    with client(server, ngo) as c:
        result = c.submit(bundle(objects))
    receipts = [r.receipt for r in result.results]
    assert all(r is not None for r in receipts)
    for obj, receipt in zip(objects, receipts, strict=True):
        assert receipt is not None
        doc = json.loads(receipt.entry)
        assert (doc["index"], doc["action"], doc["object_id"], doc["owner"]) == (
            receipt.log_index,
            "submit",
            obj["id"],
            ngo.partner_id,
        )
        assert doc["version"] == obj["modified"] and len(doc["digest"]) == 64

    # The log grows (others submit, a checkpoint is signed in between) ...
    submit(server, platform, 4)
    with client(server, ngo) as c:
        c.checkpoint()
    submit(server, platform, 2, tlp=Tlp.AMBER)

    # ... and the receipts still verify, against a checkpoint fetched now.
    key = public_key(server)
    with client(server, ngo) as c:
        assert c.public_key() == key
        for receipt in receipts:
            assert receipt is not None
            proof = c.inclusion_proof(receipt.log_index)
            assert proof.checkpoint is not None
            assert proof.checkpoint.tree_size > receipt.log_index + 6
            verify_receipt(receipt, proof, proof.checkpoint, key)
            # The independent implementation agrees on where the proof leads.
            root = rfc6962.root_from_inclusion(
                receipt.log_index, proof.tree_size, receipt.leaf_hash, proof.hashes
            )
            assert root == proof.checkpoint.root_hash


def test_a_tampered_receipt_or_another_key_fails(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    with client(server, ngo) as c:
        receipt = c.submit(bundle([indicator(ngo.identity)])).results[0].receipt
        assert receipt is not None
        submit(server, ngo, 3)
        proof = c.inclusion_proof(receipt.log_index)
    assert proof.checkpoint is not None
    key = public_key(server)

    tampered = receipt.entry.replace(ngo.partner_id.encode(), b"someone-else")
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(
            Receipt(receipt.log_index, receipt.leaf_hash, tampered), proof, proof.checkpoint, key
        )
    assert caught.value.check == "entry"
    # Consistent bytes and hash, but not what the log holds there.
    forged = Receipt(receipt.log_index, merkle.leaf_hash(tampered), tampered)
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(forged, proof, proof.checkpoint, key)
    assert caught.value.check == "inclusion"

    with pytest.raises(ReceiptError) as caught:
        verify_receipt(receipt, proof, proof.checkpoint, Signer.generate().public_key_pem)
    assert caught.value.check == "signature"

    stale = InclusionProof(receipt.log_index, proof.tree_size - 1, proof.hashes)
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(receipt, stale, proof.checkpoint, key)
    assert caught.value.check == "tree_size"


# -- who reads what ---------------------------------------------------------------------------


def test_a_partner_without_audit_sees_its_own_actions_and_its_objects(
    server: ServerThread,
    ngo: PartnerCredentials,
    platform: PartnerCredentials,
    auditor: PartnerCredentials,
) -> None:
    shared = submit(server, ngo, 3, tlp=Tlp.GREEN)
    own = submit(server, platform, 2, tlp=Tlp.GREEN)
    assert len(server.drain(platform)) == 5  # the platform receives all five

    for who in (ngo, platform):
        with client(server, who) as c:
            seen = list(c.audit_entries())
        assert seen, who.partner_id
        assert all(who.partner_id in (e.actor, e.owner) for e in seen), who.partner_id

    with client(server, ngo) as c:
        mine = list(c.audit_entries(action="submit"))
        assert sorted(e.object_id for e in mine) == sorted(shared)
        # Who received what it shared: delivery entries are about its objects.
        about_first = list(c.audit_entries(object_id=shared[0]))
        assert about_first[0].action == "submit"
        # Nothing of the platform's own submissions.
        assert list(c.audit_entries(object_id=own[0])) == []

    with client(server, platform) as c:
        assert [e.object_id for e in c.audit_entries(action="submit")] == own
        assert all(e.actor == platform.partner_id for e in c.audit_entries(object_id=shared[0]))

    every = everything(server, auditor)
    assert {e.actor for e in every} >= {ngo.partner_id, platform.partner_id}
    assert [e.index for e in every] == list(range(len(every)))


def test_deliveries_show_to_the_submitter(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    """Needs delivery recording (the subscription side): who received what I shared."""
    shared = submit(server, ngo, 2, tlp=Tlp.GREEN)
    assert len(server.drain(platform)) == 2
    entries: list[Any] = []

    def delivered_to_platform() -> bool:
        nonlocal entries
        with client(server, ngo) as c:
            entries = list(c.audit_entries(object_id=shared[0], action="deliver"))
        return platform.partner_id in {e.actor for e in entries}

    # Deliveries are recorded in batches, shortly after they happen.
    wait_until(delivered_to_platform, 10, "the delivery to be recorded")
    delivered = next(e for e in entries if e.actor == platform.partner_id)
    assert delivered.owner == ngo.partner_id and delivered.detail.get("channel") == "subscribe"


def test_verify_log_needs_the_audit_role(
    server: ServerThread,
    ngo: PartnerCredentials,
    auditor: PartnerCredentials,
) -> None:
    submit(server, ngo, 3)
    with client(server, ngo) as c, pytest.raises(PermissionDenied, match="'audit' role"):
        c.verify_log()
    with client(server, auditor) as c:
        c.checkpoint()
        result = c.verify_log()
        assert result.intact, result.summary
        assert result.entries_checked >= 3 and result.checkpoints_checked >= 1
        assert result.first_bad_index is None and result.summary.startswith("audit log intact")
        with pytest.raises(ValidationError, match="beyond the audit log"):
            c.verify_log(end=10**6)
    denied = [
        e
        for e in everything(server, auditor)
        if e.action == "audit.query" and e.detail.get("rpc") == "VerifyLog"
    ]
    assert [(e.actor, e.detail["outcome"]) for e in denied][:2] == [
        (ngo.partner_id, "denied"),
        (auditor.partner_id, "ok"),
    ]


# -- proofs, checked independently ---------------------------------------------------------------


def test_checkpoints_proofs_and_consistency_hold(
    server: ServerThread, ngo: PartnerCredentials, auditor: PartnerCredentials
) -> None:
    submit(server, ngo, 5)
    key = public_key(server)
    with client(server, auditor) as c:
        first = c.checkpoint()
        first.verify(key)
        submit(server, ngo, 7)
        second = c.checkpoint()
        second.verify(key)
        assert second.tree_size > first.tree_size

        # The signed roots are those of the entries' bytes, by the independent code.
        data = [e.data for e in c.audit_entries(with_proofs_at=second.tree_size)]
        assert len(data) == second.tree_size
        assert rfc6962.mth(data[: first.tree_size]) == first.root_hash
        assert rfc6962.mth(data) == second.root_hash

        proof = c.consistency_proof(first.tree_size, second.tree_size)
        assert proof == rfc6962.proof(first.tree_size, data)
        assert rfc6962.verify_consistency(
            first.tree_size, second.tree_size, proof, first.root_hash, second.root_hash
        )
        assert merkle.verify_consistency(
            first.tree_size, second.tree_size, proof, first.root_hash, second.root_hash
        )

        for index in (0, first.tree_size - 1, second.tree_size - 1):
            fixed = c.inclusion_proof(index, tree_size=second.tree_size)
            assert fixed.checkpoint is None
            assert fixed.hashes == rfc6962.path(index, data)

        # Every entry of the tree comes with its own proof when asked.
        for entry in c.audit_entries(with_proofs_at=first.tree_size):
            assert entry.index < first.tree_size
            assert rfc6962.verify_inclusion(
                entry.index,
                first.tree_size,
                entry.leaf_hash,
                entry.inclusion_proof,
                first.root_hash,
            )
            assert entry.leaf_hash == rfc6962.leaf(entry.data)


def test_every_call_is_recorded_once(
    server: ServerThread, ngo: PartnerCredentials, auditor: PartnerCredentials
) -> None:
    submit(server, ngo, 6)
    with client(server, ngo) as c:
        entries = list(c.audit_entries(action="submit", page_size=2, since="2000-01-01"))
        assert len(entries) == 6
        c.checkpoint()
        c.public_key()
        c.inclusion_proof(0)
    queries = [e for e in everything(server, auditor) if e.action == "audit.query"]
    by_ngo = [e.detail for e in queries if e.actor == ngo.partner_id]
    assert [d["rpc"] for d in by_ngo] == [
        "QueryEntries",
        "GetCheckpoint",
        "GetPublicKey",
        "GetInclusionProof",
    ]
    assert by_ngo[0]["action"] == "submit" and by_ngo[0]["since"].startswith("2000-01-01")
    assert all(d["outcome"] == "ok" for d in by_ngo)
    # The auditor's own query was recorded too, but after what it was shown.
    assert queries[-1].actor == ngo.partner_id


# -- paging and refusals ---------------------------------------------------------------------


def stub(server: ServerThread) -> tuple[grpc.Channel, audit_grpc.AuditServiceStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, audit_grpc.AuditServiceStub(channel)


def test_pages_resume_from_a_token(
    server: ServerThread, ngo: PartnerCredentials, auditor: PartnerCredentials
) -> None:
    submit(server, ngo, 7)
    metadata = (("authorization", f"Bearer {auditor.token}"),)
    channel, audit = stub(server)
    with channel:
        request = audit_pb.QueryEntriesRequest(action="submit", page_size=3)
        pages = list(audit.QueryEntries(request, metadata=metadata, timeout=30))
        assert [len(p.entries) for p in pages] == [3, 3, 1]
        assert all(p.next_page_token for p in pages[:-1]) and not pages[-1].next_page_token
        request.page_token = pages[0].next_page_token
        rest = [e.index for p in audit.QueryEntries(request, metadata=metadata) for e in p.entries]
        assert rest == [e.index for p in pages[1:] for e in p.entries]
        capped = audit_pb.QueryEntriesRequest(page_size=100_000)
        assert all(len(p.entries) <= 1000 for p in audit.QueryEntries(capped, metadata=metadata))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (audit_pb.QueryEntriesRequest(page_token="not-a-token"), "page_token is not one"),
        (audit_pb.QueryEntriesRequest(action="exfiltrate"), "unknown action 'exfiltrate'"),
        (audit_pb.QueryEntriesRequest(proof_tree_size=10**6), "beyond the audit log"),
    ],
)
def test_bad_queries_are_invalid_arguments(
    server: ServerThread, ngo: PartnerCredentials, request_: Any, message: str
) -> None:
    channel, audit = stub(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        list(audit.QueryEntries(request_, metadata=(("authorization", f"Bearer {ngo.token}"),)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


def test_since_after_until_is_an_invalid_argument(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    request = audit_pb.QueryEntriesRequest()
    request.since.FromSeconds(2_000_000_000)
    request.until.FromSeconds(1_000_000_000)
    channel, audit = stub(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        list(audit.QueryEntries(request, metadata=(("authorization", f"Bearer {ngo.token}"),)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is after until" in (caught.value.details() or "")


def test_impossible_proofs_are_invalid_arguments(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    submit(server, ngo, 2)
    with client(server, ngo) as c:
        size = c.checkpoint().tree_size
        with pytest.raises(ValidationError, match="not in the tree"):
            c.inclusion_proof(size + 50)
        with pytest.raises(ValidationError, match="no tree of"):
            c.inclusion_proof(0, tree_size=10**6)
        with pytest.raises(ValidationError, match="not in the tree of 1 entries"):
            c.inclusion_proof(1, tree_size=1)
        with pytest.raises(ValidationError, match="no tree of"):
            c.consistency_proof(1, 10**6)
    channel, audit = stub(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        audit.GetConsistencyProof(
            audit_pb.GetConsistencyProofRequest(first_tree_size=0, second_tree_size=1),
            metadata=(("authorization", f"Bearer {ngo.token}"),),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_call_needs_credentials(server: ServerThread) -> None:
    with ExchangeClient(server.target, token="tix_unknown") as c:
        for call in (c.checkpoint, c.public_key, c.verify_log, lambda: list(c.audit_entries())):
            with pytest.raises(AuthenticationError):
                call()


# -- bounded requests and pages (defects 7 and 13, audit side) -------------------------------


def query(server: ServerThread, who: PartnerCredentials, request: Any) -> list[Any]:
    channel, audit = stub(server)
    with channel:
        return list(
            audit.QueryEntries(
                request, metadata=(("authorization", f"Bearer {who.token}"),), timeout=60
            )
        )


def refused(server: ServerThread, who: PartnerCredentials, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        query(server, who, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    details = caught.value.details() or ""
    assert len(details) < 600, details  # never the caller's input echoed whole
    return details


def out_of_range_since() -> Any:
    request = audit_pb.QueryEntriesRequest()
    request.since.seconds = 10**15
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (audit_pb.QueryEntriesRequest(partner="p" * 257), "partner: 257 characters"),
        (
            audit_pb.QueryEntriesRequest(partner="ngo\x00"),
            "partner: holds the control character U+0000",
        ),
        (
            audit_pb.QueryEntriesRequest(object_id="indicator--\x00" + "x" * 5_000_000),
            "object_id: 5,000,012 characters",
        ),
        (
            audit_pb.QueryEntriesRequest(object_id="indicator--a\nb"),
            "object_id: holds the control character U+000A at position 12",
        ),
        (audit_pb.QueryEntriesRequest(action="z" * 3_000_000), "action: unknown action"),
        (
            audit_pb.QueryEntriesRequest(page_token="A" * 3_000_000),
            "page_token: 3,000,000 characters",
        ),
        (out_of_range_since(), "since: 1000000000000000 s and 0 ns is not a time"),
    ],
)
def test_request_fields_are_bounded_before_anything_records_them(
    server: ServerThread,
    ngo: PartnerCredentials,
    auditor: PartnerCredentials,
    request_: Any,
    message: str,
) -> None:
    assert message in refused(server, ngo, request_)
    # The refusal is recorded, small, and printable.
    [entry] = [
        e
        for e in everything(server, auditor)
        if e.action == "audit.query" and e.actor == ngo.partner_id
    ]
    assert entry.detail["outcome"] == "invalid"
    assert len(entry.data) < 2_000
    recorded = orjson.loads(entry.data)["detail"]
    assert not any(c in str(v) for v in recorded.values() for c in "\x00\n")


@pytest.fixture
def postgres_server(tmp_path: Path, postgres_url: str) -> Iterator[ServerThread]:
    srv = ServerThread(settings_for(tmp_path / "pg-data", database=postgres_url)).start()
    yield srv
    srv.stop()


@pytest.mark.postgres
def test_a_nul_in_a_filter_never_reaches_postgresql(postgres_server: ServerThread) -> None:
    ngo = postgres_server.add_partner("harbor-light")
    submit(postgres_server, ngo, 2)
    for request_ in (
        audit_pb.QueryEntriesRequest(object_id="indicator--\x00"),
        audit_pb.QueryEntriesRequest(partner="\x00"),
    ):
        assert "control character U+0000" in refused(postgres_server, ngo, request_)
    # The same query without the NUL answers as usual.
    assert query(postgres_server, ngo, audit_pb.QueryEntriesRequest(action="submit"))


def big_events(count: int) -> list[Event]:
    """Entries as large as an Event lets them be (~7 KB of detail each)."""
    return [
        Event(
            Action.AUDIT_QUERY,
            "someone",
            1_700_000_000.0 + n,
            detail={f"k{k}": f"{n}-{k}-" + "x" * 2_000 for k in range(7)},
        )
        for n in range(count)
    ]


def test_pages_are_bounded_by_bytes_and_hold_every_entry(
    server: ServerThread, auditor: PartnerCredentials
) -> None:
    assert server.server is not None
    server.run(server.server.store.append_audit(big_events(1_200)))
    size = server.run(server.server.store.audit_size())
    pages = query(server, auditor, audit_pb.QueryEntriesRequest())
    assert [e.index for p in pages for e in p.entries] == list(range(size))
    assert len(pages) > 6
    assert all(p.ByteSize() <= MAX_PAGE_BYTES + 1024 for p in pages)
    assert all(p.next_page_token for p in pages[:-1]) and not pages[-1].next_page_token
    # A token resumes where its page ended.
    request = audit_pb.QueryEntriesRequest(page_token=pages[2].next_page_token)
    rest = [e.index for p in query(server, auditor, request) for e in p.entries]
    assert rest == [*(e.index for p in pages[3:] for e in p.entries), size]  # + the 1st query
    # With proofs, likewise (each entry's proof counts in its page's bytes).
    checkpoint = client(server, auditor).checkpoint()
    proved = query(
        server, auditor, audit_pb.QueryEntriesRequest(proof_tree_size=checkpoint.tree_size)
    )
    assert sum(len(p.entries) for p in proved) == checkpoint.tree_size
    assert all(p.ByteSize() <= MAX_PAGE_BYTES + 1024 for p in proved)


def append_unbounded(server: ServerThread, cursors: int, size: int) -> None:
    """Entries as Subscribe wrote them before entries were bounded (a garbage cursor of
    ``size`` bytes each), written into the SQLite file with the log's own chaining."""
    path = server.settings.data_path / "exchange.sqlite3"
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db, db:
        index, previous = db.execute(
            "SELECT idx + 1, leaf_hash FROM audit ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        for n in range(cursors):
            doc = {
                "v": 1,
                "index": index,
                "prev": bytes(previous).hex(),
                "at": 1_700_000_000.0 + n,
                "action": "subscribe.start",
                "actor": "intruder",
                "partner": "",
                "object_id": "",
                "version": "",
                "digest": "",
                "owner": "",
                "detail": {"start": "cursor", "cursor": "A" * size},
            }
            data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
            previous = merkle.leaf_hash(data)
            db.execute(
                "INSERT INTO audit (idx, at, action, actor, partner, object_id, owner, data,"
                " leaf_hash) VALUES (?, ?, 'subscribe.start', 'intruder', '', '', '', ?, ?)",
                (index, doc["at"], data, previous),
            )
            index += 1


def test_entries_recorded_before_the_bounds_still_page_through(
    server: ServerThread, ngo: PartnerCredentials, auditor: PartnerCredentials
) -> None:
    # Defect 7: five 12 MB cursors made one page larger than any message could carry.
    submit(server, ngo, 3)
    append_unbounded(server, cursors=5, size=12_000_000)
    with client(server, auditor) as c:
        entries = list(c.audit_entries())
    big = [e for e in entries if e.actor == "intruder"]
    assert len(big) == 5
    assert all(len(e.data) > 12_000_000 for e in big)  # the record is the record
    assert all(len(str(e.detail["cursor"])) <= 1_000 for e in big)  # its reading is short
    assert [e.index for e in entries] == list(range(len(entries)))

"""The SDK's audit side: receipts parsed from submissions, the AuditService calls
against a fake in-process exchange, ``verify_receipt`` offline, and kept
checkpoints (their JSON, ``verify_consistency``, ``check_consistency``)."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from exchange_client import (
    AsyncExchangeClient,
    AuditEntry,
    Checkpoint,
    CheckpointError,
    ConsistencyError,
    ExchangeClient,
    ExchangeError,
    InclusionProof,
    ObjectResult,
    PermissionDenied,
    Receipt,
    ReceiptError,
    SubmitResult,
    ValidationError,
    VerifyResult,
    verify_consistency,
    verify_receipt,
)
from exchange_protocol import merkle
from exchange_protocol.checkpoint import make_note
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import audit_pb2_grpc as audit_grpc
from exchange_protocol.pb import exchange_pb2 as pb

ORIGIN = "exchange.example.org"


# -- a small signed log ----------------------------------------------------------------------


def entry_bytes(index: int, previous: bytes, object_id: str = "") -> bytes:
    doc = {
        "v": 1,
        "index": index,
        "prev": previous.hex(),
        "at": 1_790_000_000.0 + index,
        "action": "submit",
        "actor": "harbor-light-1a2b3c",
        "partner": "",
        "object_id": object_id or f"indicator--{index}",
        "version": "2026-11-27T10:00:00.000Z",
        "digest": "ab" * 32,
        "owner": "harbor-light-1a2b3c",
        "detail": {"outcome": "accepted"},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Log:
    """Entries chained like the exchange's, and checkpoints signed with a test key."""

    def __init__(self, size: int, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.entries: list[bytes] = []
        previous = bytes(32)
        for i in range(size):
            data = entry_bytes(i, previous)
            self.entries.append(data)
            previous = merkle.leaf_hash(data)
        self.leaves = [merkle.leaf_hash(e) for e in self.entries]

    @property
    def public_key_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = len(self.entries) if size is None else size
        root = merkle.root_hash(self.leaves[:size])
        note = make_note(ORIGIN, size, root, 1_790_000_000_000_000_000 + size)
        return Checkpoint.parse(note, self.key.sign(note))

    def receipt(self, index: int) -> Receipt:
        return Receipt(log_index=index, leaf_hash=self.leaves[index], entry=self.entries[index])

    def proof(self, index: int, size: int | None = None) -> InclusionProof:
        size = len(self.entries) if size is None else size
        hashes = merkle.inclusion_proof(self.leaves[:size], index)
        return InclusionProof(log_index=index, tree_size=size, hashes=hashes)

    def checkpoint_pb(self, size: int | None = None) -> audit_pb.Checkpoint:
        cp = self.checkpoint(size)
        return audit_pb.Checkpoint(
            note=cp.note,
            signature=cp.signature,
            origin=cp.origin,
            tree_size=cp.tree_size,
            root_hash=cp.root_hash,
        )

    def entry_pb(self, index: int, proof_size: int = 0) -> audit_pb.AuditEntry:
        doc = json.loads(self.entries[index])
        message = audit_pb.AuditEntry(
            index=index,
            data=self.entries[index],
            leaf_hash=self.leaves[index],
            action=doc["action"],
            actor=doc["actor"],
            object_id=doc["object_id"],
            version=doc["version"],
            digest=doc["digest"],
            owner=doc["owner"],
            detail_json=json.dumps(doc["detail"]),
        )
        message.at.FromNanoseconds(int(doc["at"] * 1e9))
        if proof_size:
            message.inclusion_proof.extend(self.proof(index, proof_size).hashes)
        return message


# -- verify_receipt --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 7, 8, 33])
def test_every_receipt_of_a_log_verifies(size: int) -> None:
    log = Log(size)
    checkpoint = log.checkpoint()
    for index in range(size):
        # Returns nothing; raises ReceiptError if anything does not hold.
        verify_receipt(log.receipt(index), log.proof(index), checkpoint, log.public_key_pem)


def test_a_receipt_verifies_against_a_later_checkpoint() -> None:
    log = Log(20)
    early = log.receipt(3)  # kept since the log had 4 entries
    later = log.checkpoint(20)
    verify_receipt(early, log.proof(3, 20), later, log.public_key_pem.encode())


def check_fails(
    check: str, receipt: Receipt, proof: InclusionProof, checkpoint: Checkpoint, key: str
) -> str:
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(receipt, proof, checkpoint, key)
    assert caught.value.check == check, str(caught.value)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_changed_entry_is_refused() -> None:
    log = Log(9)
    receipt = log.receipt(4)
    edited = receipt.entry.replace(b"indicator--4", b"indicator--5")
    message = check_fails(
        "entry",
        Receipt(4, receipt.leaf_hash, edited),
        log.proof(4),
        log.checkpoint(),
        log.public_key_pem,
    )
    assert "do not hash to its leaf hash" in message


def test_an_entry_naming_another_index_is_refused() -> None:
    log = Log(9)
    entry = log.entries[4]
    # A consistent receipt (bytes and leaf hash agree) presented at the wrong position.
    message = check_fails(
        "entry",
        Receipt(5, merkle.leaf_hash(entry), entry),
        log.proof(5),
        log.checkpoint(),
        log.public_key_pem,
    )
    assert "says it is at log index 4, not 5" in message


def test_another_key_is_refused() -> None:
    log = Log(9)
    other = Log(1).public_key_pem
    message = check_fails("signature", log.receipt(2), log.proof(2), log.checkpoint(), other)
    assert "does not verify" in message


def test_a_forged_checkpoint_is_refused() -> None:
    log = Log(9)
    honest = log.checkpoint()
    forged_note = make_note(ORIGIN, 9, bytes(32), 1)
    forged = Checkpoint.parse(forged_note, honest.signature)
    check_fails("signature", log.receipt(2), log.proof(2), forged, log.public_key_pem)


def test_a_proof_for_another_tree_size_is_refused() -> None:
    log = Log(12)
    message = check_fails(
        "tree_size", log.receipt(2), log.proof(2, 10), log.checkpoint(12), log.public_key_pem
    )
    assert "tree of 10 entries" in message and "one of 12" in message


def test_a_proof_for_another_entry_is_refused() -> None:
    log = Log(12)
    proof = log.proof(3)
    check_fails("tree_size", log.receipt(2), proof, log.checkpoint(), log.public_key_pem)


def test_a_proof_that_does_not_lead_to_the_root_is_refused() -> None:
    log = Log(12)
    proof = log.proof(2)
    bad = InclusionProof(2, 12, [proof.hashes[0], bytes(32), *proof.hashes[2:]])
    message = check_fails("inclusion", log.receipt(2), bad, log.checkpoint(), log.public_key_pem)
    assert "does not lead to the root" in message
    # An entry the log does not hold: its own log, signed with the same key.
    other = Log(12, key=log.key)
    other.entries[2] = entry_bytes(2, other.leaves[1], object_id="indicator--not-there")
    other.leaves[2] = merkle.leaf_hash(other.entries[2])
    check_fails("inclusion", other.receipt(2), other.proof(2), log.checkpoint(), log.public_key_pem)


def test_receipt_error_is_a_value_error_and_pickles() -> None:
    error = ReceiptError("the entry was changed", "entry")
    assert isinstance(error, ValueError) and not isinstance(error, ExchangeError)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (type(copy), str(copy), copy.check) == (ReceiptError, "the entry was changed", "entry")


def test_missing_cryptography_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log(3)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ImportError, match=r"exchange-client\[verify\]"):
        verify_receipt(log.receipt(0), log.proof(0), log.checkpoint(), log.public_key_pem)


# -- receipts in submission results -----------------------------------------------------------


def test_submit_results_carry_receipts() -> None:
    log = Log(2)
    response = pb.SubmitResponse()
    accepted = response.results.add(object_id="indicator--0", outcome=pb.OUTCOME_ACCEPTED)
    accepted.receipt.log_index = 0
    accepted.receipt.leaf_hash = log.leaves[0]
    accepted.receipt.entry = log.entries[0]
    response.results.add(object_id="indicator--1", outcome=pb.OUTCOME_DUPLICATE, index=1)
    result = SubmitResult._from_pb(response)
    assert result.results[0].receipt == log.receipt(0)
    assert result.results[1].receipt is None
    assert ObjectResult("x", "v", "accepted", 0).receipt is None


# -- the calls, against a fake exchange -------------------------------------------------------


class FakeAudit(audit_grpc.AuditServiceServicer):
    def __init__(self) -> None:
        self.log = Log(25)
        self.requests: list[Any] = []
        self.metadata: list[dict[str, Any]] = []
        self.fail: grpc.StatusCode | None = None
        self.stream_cancelled = threading.Event()

    def _seen(self, request: Any, context: Any) -> None:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.fail is not None:
            context.abort(self.fail, f"refused with {self.fail.name}")

    def QueryEntries(self, request: Any, context: Any) -> Iterator[audit_pb.QueryEntriesResponse]:
        self._seen(request, context)
        context.add_callback(self.stream_cancelled.set)
        size = request.page_size or 1000
        bound = request.proof_tree_size or len(self.log.entries)
        indexes = list(range(bound))
        for start in range(0, len(indexes), size):
            page = indexes[start : start + size]
            yield audit_pb.QueryEntriesResponse(
                entries=[self.log.entry_pb(i, request.proof_tree_size) for i in page],
                next_page_token=f"t{page[-1]}" if start + size < len(indexes) else "",
            )

    def GetCheckpoint(self, request: Any, context: Any) -> audit_pb.GetCheckpointResponse:
        self._seen(request, context)
        return audit_pb.GetCheckpointResponse(checkpoint=self.log.checkpoint_pb())

    def GetInclusionProof(self, request: Any, context: Any) -> audit_pb.GetInclusionProofResponse:
        self._seen(request, context)
        size = request.tree_size or len(self.log.entries)
        response = audit_pb.GetInclusionProofResponse(
            log_index=request.log_index,
            tree_size=size,
            hashes=self.log.proof(request.log_index, size).hashes,
        )
        if not request.tree_size:
            response.checkpoint.CopyFrom(self.log.checkpoint_pb())
        return response

    def GetConsistencyProof(
        self, request: Any, context: Any
    ) -> audit_pb.GetConsistencyProofResponse:
        self._seen(request, context)
        leaves = self.log.leaves[: request.second_tree_size]
        hashes = merkle.consistency_proof(leaves, request.first_tree_size)
        return audit_pb.GetConsistencyProofResponse(hashes=hashes)

    def GetPublicKey(self, request: Any, context: Any) -> audit_pb.GetPublicKeyResponse:
        self._seen(request, context)
        return audit_pb.GetPublicKeyResponse(public_key_pem=self.log.public_key_pem, key_id="k")

    def VerifyLog(self, request: Any, context: Any) -> audit_pb.VerifyLogResponse:
        self._seen(request, context)
        if request.start == 7:
            return audit_pb.VerifyLogResponse(
                intact=False,
                entries_checked=7,
                first_bad_index=7,
                problem="leaf hash does not\nmatch its bytes (edited)",
                summary="audit log NOT intact: entry 7: leaf hash does not match its bytes",
            )
        return audit_pb.VerifyLogResponse(
            intact=True, entries_checked=25, checkpoints_checked=2, summary="audit log intact"
        )


@pytest.fixture
def fake() -> Iterator[tuple[ExchangeClient, FakeAudit]]:
    servicer = FakeAudit()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    audit_grpc.add_AuditServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with ExchangeClient(target=f"127.0.0.1:{port}", token="s3cret") as client:
        yield client, servicer
    server.stop(0)


def test_audit_entries_sends_the_filters(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    entries = list(
        client.audit_entries(
            partner=" kestrel-social-9f8e7d ",
            object_id="indicator--3",
            action="deliver",
            since="2026-11-27",
            until=datetime(2026, 11, 28, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            page_size=10,
        )
    )
    assert [e.index for e in entries] == list(range(25))
    request = servicer.requests[0]
    assert (request.partner, request.object_id, request.action) == (
        "kestrel-social-9f8e7d",
        "indicator--3",
        "deliver",
    )
    assert request.since.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 27, tzinfo=UTC)
    assert request.until.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert (request.page_size, request.proof_tree_size) == (10, 0)
    assert servicer.metadata[0]["authorization"] == "Bearer s3cret"


def test_audit_entries_are_parsed(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    first = next(iter(client.audit_entries()))
    assert isinstance(first, AuditEntry)
    assert first.at == datetime.fromtimestamp(1_790_000_000, tz=UTC)
    assert (first.action, first.actor, first.object_id) == (
        "submit",
        "harbor-light-1a2b3c",
        "indicator--0",
    )
    assert first.detail == {"outcome": "accepted"}
    assert first.data == servicer.log.entries[0] and first.leaf_hash == servicer.log.leaves[0]
    assert first.inclusion_proof == []
    assert first.receipt == servicer.log.receipt(0)
    assert "data=" not in repr(first)


def test_audit_entries_with_proofs(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    checkpoint = client.checkpoint()
    entries = list(client.audit_entries(with_proofs_at=20))
    assert len(entries) == 20 and servicer.requests[-1].proof_tree_size == 20
    for entry in entries:
        assert merkle.verify_inclusion(
            entry.leaf_hash,
            entry.index,
            20,
            entry.inclusion_proof,
            servicer.log.checkpoint(20).root_hash,
        )
    # Every entry of the latest checkpoint's tree is a verifiable receipt.
    for entry in client.audit_entries(with_proofs_at=checkpoint.tree_size):
        proof = InclusionProof(entry.index, checkpoint.tree_size, entry.inclusion_proof)
        verify_receipt(entry.receipt, proof, checkpoint, client.public_key())


def test_leaving_the_loop_cancels_the_stream(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    for entry in client.audit_entries(page_size=1):
        assert entry.index == 0
        break
    assert servicer.stream_cancelled.wait(5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"since": "yesterday"}, ValueError, "ISO 8601"),
        ({"since": "2026-11-28", "until": "2026-11-27"}, ValueError, "after until"),
        ({"page_size": 0}, ValueError, "at least 1"),
        ({"with_proofs_at": -1}, ValueError, "at least 1"),
        ({"page_size": "10"}, TypeError, "must be an int"),
        ({"since": 1_790_000_000}, TypeError, "datetime"),
    ],
)
def test_audit_entries_refuses_bad_arguments_before_any_call(
    fake: tuple[ExchangeClient, FakeAudit],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    client, servicer = fake
    with pytest.raises(error, match=match):
        client.audit_entries(**kwargs)
    assert servicer.requests == []


def test_errors_are_mapped(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    servicer.fail = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied, match="refused with PERMISSION_DENIED"):
        client.verify_log()
    with pytest.raises(PermissionDenied):
        list(client.audit_entries())
    servicer.fail = grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValidationError):
        client.inclusion_proof(99, 10)


def test_checkpoint_and_proofs(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    checkpoint = client.checkpoint()
    assert (checkpoint.origin, checkpoint.tree_size) == (ORIGIN, 25)
    checkpoint.verify(client.public_key())

    proof = client.inclusion_proof(4)
    assert (proof.log_index, proof.tree_size) == (4, 25)
    assert proof.checkpoint == checkpoint
    verify_receipt(servicer.log.receipt(4), proof, proof.checkpoint, client.public_key())
    fixed = client.inclusion_proof(4, tree_size=9)
    assert (fixed.tree_size, fixed.checkpoint) == (9, None)
    assert servicer.requests[-1].tree_size == 9

    hashes = client.consistency_proof(9, 25)
    assert merkle.verify_consistency(
        9, 25, hashes, servicer.log.checkpoint(9).root_hash, checkpoint.root_hash
    )
    with pytest.raises(ValueError, match="must not be larger"):
        client.consistency_proof(25, 9)
    with pytest.raises(ValueError, match="at least 1"):
        client.consistency_proof(0, 9)


def test_a_malformed_checkpoint_is_an_exchange_error(
    fake: tuple[ExchangeClient, FakeAudit],
) -> None:
    client, servicer = fake
    servicer.log.checkpoint_pb = lambda size=None: audit_pb.Checkpoint(  # type: ignore[method-assign]
        note=b"not a note", signature=b"x", tree_size=25
    )
    with pytest.raises(ExchangeError, match="malformed checkpoint: not a checkpoint note"):
        client.checkpoint()


def test_verify_log(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake
    assert client.verify_log() == VerifyResult(
        intact=True,
        entries_checked=25,
        checkpoints_checked=2,
        first_bad_index=None,
        problem="",
        summary="audit log intact",
    )
    bad = client.verify_log(start=7, end=20)
    assert (bad.intact, bad.first_bad_index) == (False, 7)
    assert bad.problem == "leaf hash does not match its bytes (edited)"
    assert (servicer.requests[-1].start, servicer.requests[-1].end) == (7, 20)
    with pytest.raises(ValueError, match="smaller than end"):
        client.verify_log(start=5, end=5)


def test_closed_client_refuses_audit_calls(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, _ = fake
    client.close()
    for call in (client.checkpoint, client.public_key, client.verify_log, client.audit_entries):
        with pytest.raises(RuntimeError, match="closed"):
            call()


# -- kept checkpoints: the log still holds them ------------------------------------------------


def test_a_kept_checkpoint_reads_back_from_its_json() -> None:
    log = Log(9)
    checkpoint = log.checkpoint()
    text = checkpoint.to_json()
    assert "\n" not in text
    doc = json.loads(text)
    assert (doc["type"], doc["origin"], doc["tree_size"]) == ("checkpoint", ORIGIN, 9)
    assert doc["at"].endswith("Z")
    assert Checkpoint.from_json(text) == checkpoint
    assert Checkpoint.from_json(text.encode()) == checkpoint
    # An export's first line, other keys and the lines after it included.
    export = json.dumps({**doc, "public_key": log.public_key_pem}) + '\n{"type": "entry"}\n'
    assert Checkpoint.from_json(export) == checkpoint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "its first line is not JSON"),
        ("[1, 2]", '"type" "checkpoint"'),
        ('{"type": "entry"}', '"type" "checkpoint"'),
        ('{"note": "bm90ZQ=="}', '"note" and "signature" in base64'),
        ('{"note": "!!", "signature": ""}', '"note" and "signature" in base64'),
        ('{"note": "bm90ZQ==", "signature": ""}', "not a checkpoint note"),
    ],
)
def test_what_is_not_a_kept_checkpoint(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Checkpoint.from_json(text)


def test_a_kept_checkpoint_whose_fields_were_edited_is_refused() -> None:
    doc = json.loads(Log(9).checkpoint().to_json())
    for name, value in (("tree_size", 20), ("origin", "elsewhere"), ("root_hash", "AAAA")):
        with pytest.raises(CheckpointError, match=f"its {name} says .* but its signed note"):
            Checkpoint.from_json(json.dumps({**doc, name: value}))


def rewritten(log: Log, index: int) -> Log:
    """The same log (and key) with entry ``index`` changed and every hash after it redone."""
    other = Log(0, log.key)
    previous = bytes(32)
    for i in range(len(log.entries)):
        data = entry_bytes(i, previous, object_id="indicator--forged" if i == index else "")
        other.entries.append(data)
        previous = merkle.leaf_hash(data)
    other.leaves = [merkle.leaf_hash(e) for e in other.entries]
    return other


def test_a_later_checkpoint_consistent_with_a_kept_one() -> None:
    log = Log(25)
    for size in (0, 1, 8, 9, 25):
        kept = log.checkpoint(size)
        later = log.checkpoint()
        proof = merkle.consistency_proof(log.leaves, size) if 0 < size < 25 else []
        verify_consistency(kept, later, proof, log.public_key_pem)
        verify_consistency(kept, kept, [], log.public_key_pem)


def test_an_inconsistent_later_checkpoint_says_which_check_failed() -> None:
    log = Log(25)
    kept = log.checkpoint(9)
    key = log.public_key_pem

    def check(later: Checkpoint, proof: list[bytes], public_key: str = key) -> ConsistencyError:
        with pytest.raises(ConsistencyError) as caught:
            verify_consistency(kept, later, proof, public_key)
        return caught.value

    short = check(log.checkpoint(5), [])
    assert short.check == "truncated"
    assert str(short) == (
        "the log holds 5 entries, fewer than the 9 of the checkpoint you kept: truncated"
        " (entries 5 to 8 are gone)"
    )
    forged = rewritten(log, 3)
    changed = check(forged.checkpoint(), merkle.consistency_proof(forged.leaves, 9))
    assert changed.check == "consistency"
    assert str(changed).startswith("entries before 9 differ from the checkpoint you kept")
    assert check(forged.checkpoint(9), []).check == "consistency"
    assert check(log.checkpoint(), [b"\x00" * 32]).check == "consistency"
    assert check(log.checkpoint(), [], Log(1).public_key_pem).check == "signature"
    stranger = Log(25)
    assert check(stranger.checkpoint(), [], stranger.public_key_pem).check == "signature"
    elsewhere = Checkpoint.parse(
        make_note("elsewhere", 25, log.checkpoint().root_hash, 1),
        log.key.sign(make_note("elsewhere", 25, log.checkpoint().root_hash, 1)),
    )
    assert check(elsewhere, []).check == "origin"
    copy = pickle.loads(pickle.dumps(short))  # noqa: S301 - our own object
    assert (type(copy), str(copy), copy.check) == (ConsistencyError, str(short), "truncated")
    assert isinstance(short, ValueError) and not isinstance(short, ExchangeError)


def test_check_consistency_asks_for_the_latest_checkpoint_and_a_proof(
    fake: tuple[ExchangeClient, FakeAudit],
) -> None:
    client, servicer = fake
    key = servicer.log.public_key_pem
    kept = servicer.log.checkpoint(9)
    latest = client.check_consistency(kept, key)
    assert latest == servicer.log.checkpoint()
    asked = servicer.requests[-1]
    assert (asked.first_tree_size, asked.second_tree_size) == (9, 25)
    assert client.check_consistency(latest, key) == latest  # same size: no proof needed

    servicer.log = rewritten(servicer.log, 2)
    with pytest.raises(ConsistencyError, match="entries before 9 differ") as caught:
        client.check_consistency(kept, key)
    assert caught.value.check == "consistency"
    servicer.log = Log(4, servicer.log.key)
    with pytest.raises(ConsistencyError, match="holds 4 entries, fewer than the 9"):
        client.check_consistency(kept, key)


def test_check_consistency_from_asyncio(fake: tuple[ExchangeClient, FakeAudit]) -> None:
    client, servicer = fake

    async def check() -> Checkpoint:
        async with AsyncExchangeClient(target=client.target, token="s3cret") as aclient:
            return await aclient.check_consistency(
                servicer.log.checkpoint(3), servicer.log.public_key_pem
            )

    assert asyncio.run(check()) == servicer.log.checkpoint()

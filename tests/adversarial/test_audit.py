"""Attacks on the audit log, against a real server process on both stores: a partner
that sends huge garbage in the fields Subscribe records (defect 7), and one that puts
NUL and megabytes into an audit query's filters (defect 13). Whatever it sends, the
log grows by a few KB, an auditor still pages through every entry (SDK and CLI), and
the refusals are the same bounded INVALID_ARGUMENT on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import uuid

import grpc
import orjson
import pytest
from exchange_client import AuditEntry, NotFound
from exchange_protocol.pb import audit_pb2, audit_pb2_grpc, exchange_pb2, exchange_pb2_grpc

from exchange.services.audit import MAX_PAGE_BYTES
from tests.adversarial.harness import STORES, Exchange, ExchangeFactory, Partner
from tests.e2e.process import EXCHANGE
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(600)

MB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * MB),
    ("grpc.max_receive_message_length", 64 * MB),
]


def metadata(who: Partner) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {who.token}"),)


def subscribe_once(
    exchange: Exchange, who: Partner, request: exchange_pb2.SubscribeRequest
) -> None:
    """One Subscribe call: refused, or ended by us after its first message."""
    with grpc.insecure_channel(exchange.target, options=CHANNEL_OPTIONS) as channel:
        call = exchange_pb2_grpc.ExchangeServiceStub(channel).Subscribe(
            request, metadata=metadata(who), timeout=60
        )
        try:
            next(iter(call))
        except (grpc.RpcError, StopIteration):
            pass
        finally:
            call.cancel()  # type: ignore[no-untyped-call]


def everything(exchange: Exchange, auditor: Partner) -> list[AuditEntry]:
    with exchange.client(auditor, timeout=300) as client:
        return list(client.audit_entries())


def recorded_up_to_a_marker(exchange: Exchange, auditor: Partner, who: Partner) -> list[AuditEntry]:
    """Every entry, once what ``who`` did so far is recorded: a look-up after it is
    recorded behind it (the recorder appends in order), so wait for that one."""
    marker = f"indicator--{uuid.uuid4()}"
    with exchange.client(who) as client, pytest.raises(NotFound):
        client.get(marker)
    entries: list[AuditEntry] = []

    def marked() -> bool:
        nonlocal entries
        entries = everything(exchange, auditor)
        return any(e.object_id == marker for e in entries)

    wait_until(marked, 60, "the attacker's look-up to be recorded")
    return entries


@STORES
def test_huge_subscribe_fields_leave_small_entries_and_pages_that_fit(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    exchange = exchange_factory(store=store)
    attacker = exchange.add_partner("attacker")
    auditor = exchange.add_partner("auditor", roles=("audit",))
    before = everything(exchange, auditor)
    last = before[-1].index

    # Five 12 MB garbage cursors, and labels: 2,000 of 5,000 characters (10 MB).
    for n in range(5):
        subscribe_once(
            exchange, attacker, exchange_pb2.SubscribeRequest(cursor=chr(65 + n) * 12_000_000)
        )
    subscribe_once(exchange, attacker, exchange_pb2.SubscribeRequest(labels=["L" * 5_000] * 2_000))
    entries = recorded_up_to_a_marker(exchange, auditor, attacker)

    added = [e for e in entries if e.index > last and e.actor == attacker.partner_id]
    assert added, "the attacker's calls left no entry at all"
    grown = sum(len(e.data) for e in added)
    assert grown < 24 * 1024, (grown, [len(e.data) for e in added])
    assert all(len(e.data) < 8 * 1024 for e in added)

    # The auditor pages through everything, with the SDK and with the CLI.
    assert [e.index for e in entries] == list(range(len(entries)))
    with grpc.insecure_channel(exchange.target, options=CHANNEL_OPTIONS) as channel:
        pages = list(
            audit_pb2_grpc.AuditServiceStub(channel).QueryEntries(
                audit_pb2.QueryEntriesRequest(), metadata=metadata(auditor), timeout=120
            )
        )
    assert all(p.ByteSize() <= MAX_PAGE_BYTES + 1024 for p in pages)
    listed = subprocess.run(
        [EXCHANGE, "audit", "log", "--format", "jsonl", "--target", exchange.target],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"EXCHANGE_TOKEN": auditor.token, "PATH": "/usr/bin:/bin"},
    )
    assert listed.returncode == 0, listed.stderr
    indexes = [orjson.loads(line)["index"] for line in listed.stdout.splitlines()]
    assert indexes[: len(entries)] == [e.index for e in entries]


@STORES
def test_huge_and_nul_audit_filters_are_refused_alike_on_both_stores(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    exchange = exchange_factory(store=store)
    attacker = exchange.add_partner("attacker")
    auditor = exchange.add_partner("auditor", roles=("audit",))
    before = everything(exchange, auditor)[-1].index
    attacks = [
        (audit_pb2.QueryEntriesRequest(object_id="indicator--\x00"), "object_id: holds the"),
        (audit_pb2.QueryEntriesRequest(partner="\x00" * 1_000), "partner: 1,000 characters"),
        (audit_pb2.QueryEntriesRequest(partner="p" * 10_000_000), "partner: 10,000,000"),
        (audit_pb2.QueryEntriesRequest(page_token="\x00" * 10_000_000), "page_token: 10,000,000"),
        (audit_pb2.QueryEntriesRequest(action="\x00" * 10_000_000), "action: unknown action"),
    ]
    with grpc.insecure_channel(exchange.target, options=CHANNEL_OPTIONS) as channel:
        audit = audit_pb2_grpc.AuditServiceStub(channel)
        for request, message in attacks:
            with pytest.raises(grpc.RpcError) as caught:
                list(audit.QueryEntries(request, metadata=metadata(attacker), timeout=60))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            details = caught.value.details() or ""
            assert message in details and len(details) < 600, details[:200]
    # Each refusal is recorded, small; the exchange serves on.
    refusals = [
        e
        for e in everything(exchange, auditor)
        if e.index > before and e.actor == attacker.partner_id and e.action == "audit.query"
    ]
    assert [e.detail["outcome"] for e in refusals] == ["invalid"] * len(attacks)
    assert all(len(e.data) < 2_000 for e in refusals)
    assert exchange.probe(attacker, count=3).p99 < 30

"""A runaway batch job: one partner opening calls faster than the exchange can take
them, with large requests. Past its limits it is refused before its requests are read,
so the server's memory stays bounded and other partners are served as usual."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import orjson
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from tests.adversarial.flood import bundle_of
from tests.adversarial.harness import STORES, Exchange, ExchangeFactory, Latencies, Partner
from tests.helpers import bundle, indicator, wait_until

# A 15 MB bundle (under limits.max_bundle_bytes): one object the validator refuses.
LARGE = bundle_of(15)


def _stub(exchange: Exchange) -> tuple[grpc.Channel, exchange_pb2_grpc.ExchangeServiceStub]:
    channel = grpc.insecure_channel(
        exchange.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    return channel, exchange_pb2_grpc.ExchangeServiceStub(channel)


def _flood(exchange: Exchange, token: str, victim: Partner) -> tuple[Counter[str], int, Latencies]:
    """40 connections sending 3 submissions of 15 MB each (1.8 GB) with ``token``, from
    another process, while ``victim`` submits one object at a time: the status codes
    of the flood, the server's peak RSS, the victim's latencies."""
    peak = [exchange.rss_bytes()]
    flood = subprocess.Popen(
        [sys.executable, "-m", "tests.adversarial.flood", exchange.target, token],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: (
                exchange.metric("exchange_submissions_in_progress") >= 1
                or 'code="UNAUTHENTICATED"' in exchange.metrics()
            ),
            60,
            "the flood",
        )

        def flooding() -> bool:
            peak[0] = max(peak[0], exchange.rss_bytes())
            return flood.poll() is None

        latencies = exchange.probe(victim, during=flooding)
        out, _ = flood.communicate(timeout=300)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    return Counter(orjson.loads(out)), peak[0], latencies


@STORES
def test_a_flood_of_large_submissions_is_refused_before_it_is_read(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    exchange = exchange_factory(store=store, validation_workers=2)
    attacker = exchange.add_partner("attacker")
    victim = exchange.add_partner("victim")
    codes, peak, latencies = _flood(exchange, attacker.token, victim)
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    # Without admission before reading, the server held 2.3 GB; now about 0.5 GB.
    assert peak < 1_000_000_000, peak
    # Decoding a 15 MB bundle holds the interpreter lock (~0.5 s, twice that on a busy
    # machine): the victim may wait for one decode, never for the flood (it waited for
    # all of it before admission and fair validation).
    assert latencies.p99 < 2.5, latencies
    # Refused before their bundles were read (calls past 8), or before they were decoded
    # (bytes past 32 MiB): each refusal names its limit and is counted under it.
    refused = sum(
        exchange.metric("exchange_limit_refusals_total", limit=f"limits.{limit}")
        for limit in ("max_submissions_per_partner", "max_submission_bytes_per_partner")
    )
    assert refused == codes["RESOURCE_EXHAUSTED"]


def test_a_made_up_token_is_refused_before_its_request_is_read(
    exchange_factory: ExchangeFactory,
) -> None:
    exchange = exchange_factory(validation_workers=2)
    victim = exchange.add_partner("victim")
    codes, peak, latencies = _flood(exchange, "xt_" + "0" * 40, victim)
    assert codes == {"UNAUTHENTICATED": 120}, codes
    # Read whole before the handler refused them, they took the server to 1.6 GB.
    assert peak < 600_000_000, peak
    assert latencies.p99 < 1.0, latencies


def test_calls_dropped_while_sending_give_their_slot_back(
    exchange_factory: ExchangeFactory,
) -> None:
    exchange = exchange_factory(limits={"max_submissions_per_partner": 2})
    partner = exchange.add_partner("flaky")
    failures: Counter[str] = Counter()
    channel, stub = _stub(exchange)
    with channel:
        # Each call is cut off (deadline) while its request is still on the way or in
        # the pipeline; none may keep a slot.
        for _ in range(10):
            try:
                stub.Submit(
                    exchange_pb2.SubmitRequest(bundle=LARGE),
                    metadata=(("authorization", f"Bearer {partner.token}"),),
                    timeout=0.02,
                )
            except grpc.RpcError as exc:
                failures[exc.code().name] += 1
    assert set(failures) <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}, failures
    # Once the server has let go of them, both slots are free again.
    deadline = time.monotonic() + 60
    while True:
        codes: Counter[str] = Counter()
        threads = [threading.Thread(target=_ok, args=(exchange, partner, codes)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        if codes["OK"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert codes["OK"] == 2, codes


def _ok(exchange: Exchange, partner: Partner, codes: Counter[str]) -> None:
    with exchange.client(partner) as client:
        try:
            client.submit(bundle([indicator(partner.identity, n=int(time.time() * 1e6) % 10**6)]))
            codes["OK"] += 1
        except Exception as exc:
            codes[type(exc).__name__] += 1

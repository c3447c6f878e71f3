"""Observability end to end, over real gRPC and real HTTP on loopback: metrics move
with real traffic, JSON log lines carry request and partner ids and never a secret
or an object body, /readyz follows the gRPC health status, and health follows a
real Kafka broker going away and coming back, and a data directory that fills up."""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from exchange.config import LoggingSettings
from exchange.logs import PARTNER_ID, REQUEST_ID, configure_logging
from exchange.model import Tlp
from exchange.server import SERVICE_NAME
from exchange.services._logging import CallLog
from tests.diskspace import MIB, small_disk
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
    wait_until,
)
from tests.kafka_broker import TansuBroker, free_port

SUBMIT = "/exchange.v1.ExchangeService/Submit"
SUBSCRIBE = "/exchange.v1.ExchangeService/Subscribe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- helpers -------------------------------------------------------------------------------


class JsonLog:
    """The root logger configured by configure_logging in JSON mode, into memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self._lock = threading.Lock()

    @property
    def text(self) -> str:
        with self._lock:
            return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        # Every line is one JSON object (json.loads fails the test otherwise).
        return [json.loads(line) for line in self.text.splitlines()]

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [
            r for r in self.lines() if r["logger"] == "exchange.calls" and r["method"] == method
        ]


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    captured = JsonLog()
    configure_logging(LoggingSettings(format="json", level="info"), stream=captured.stream)
    try:
        yield captured
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape(server: ServerThread) -> Samples:
    assert server.server is not None and server.server.metrics_server is not None
    status, text = http_get(f"http://127.0.0.1:{server.server.metrics_server.port}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def probe(server: ServerThread, path: str) -> tuple[int, str]:
    assert server.server is not None and server.server.metrics_server is not None
    return http_get(f"http://127.0.0.1:{server.server.metrics_server.port}{path}")


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(response.status)


def metadata(who: PartnerCredentials, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    md = [("authorization", f"Bearer {who.token}")]
    if request_id is not None:
        md.append(("x-request-id", request_id))
    return tuple(md)


# -- contextvars through a grpc.aio interceptor ---------------------------------------------


class _Probe(health_aio.HealthServicer):  # type: ignore[misc]
    """A real servicer that records what its handler sees and logs a line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str | None, str | None]] = []

    async def Check(self, request: Any, context: Any) -> Any:
        self.seen.append((REQUEST_ID.get(), PARTNER_ID.get()))
        PARTNER_ID.set("partner-in-handler")  # as Authenticator.authenticate does
        logging.getLogger("exchange.test.handler").info("inside the handler")
        return await super().Check(request, context)


async def test_interceptor_context_reaches_the_handler_and_its_log_records(
    json_log: JsonLog,
) -> None:
    servicer = _Probe()
    server = grpc.aio.server(interceptors=(CallLog(),))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    logging.getLogger("exchange.calls").setLevel(logging.DEBUG)  # health calls log at debug
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "r-1"),))
            await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "x y"),))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        logging.getLogger("exchange.calls").setLevel(logging.NOTSET)
        await server.stop(None)
    (first, _), (second, _), (third, _) = servicer.seen
    assert first == "r-1"
    assert second not in (None, "x y") and third not in (None, second)
    # A partner id never leaks from one call into the next.
    assert [partner for _, partner in servicer.seen] == [None, None, None]
    inside = [r for r in json_log.lines() if r["logger"] == "exchange.test.handler"]
    assert [(r["request_id"], r["partner_id"]) for r in inside] == [
        (first, "partner-in-handler"),
        (second, "partner-in-handler"),
        (third, "partner-in-handler"),
    ]
    calls = json_log.calls("/grpc.health.v1.Health/Check")
    assert [(r["request_id"], r["partner_id"], r["code"]) for r in calls] == [
        (first, "partner-in-handler", "OK"),
        (second, "partner-in-handler", "OK"),
        (third, "partner-in-handler", "NOT_FOUND"),
    ]
    assert all(r["duration_ms"] >= 0 and r["level"] == "DEBUG" for r in calls)


# -- metrics, logs and readiness with real traffic -------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(settings_for(tmp_path / "data", metrics={"listen": "127.0.0.1:0"})).start()
    yield srv
    srv.stop()


def test_metrics_logs_and_probes_follow_real_traffic(
    server: ServerThread, json_log: JsonLog
) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    secret_text = f"Quillfeather lure {uuid.uuid4().hex}"
    good = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN, description=secret_text) for i in range(4)]
    bad = indicator(ngo.identity, n=9, confidence=150, description=secret_text)

    assert probe(server, "/healthz") == (200, "ok\n")
    assert probe(server, "/readyz") == (200, "SERVING\n")
    before = scrape(server)
    assert before[("exchange_subscriptions_open", ())] == 0

    with grpc.insecure_channel(server.target) as channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        answer = stub.Submit(
            exchange_pb2.SubmitRequest(bundle=orjson.dumps(bundle([*good, bad]))),
            metadata=metadata(ngo, "submit-req-0001"),
        )
        assert (answer.accepted_count, answer.rejected_count) == (4, 1)
        answer = stub.Submit(
            exchange_pb2.SubmitRequest(bundle=orjson.dumps(bundle(good[:1]))),
            metadata=metadata(ngo),
        )
        assert answer.duplicate_count == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(
                exchange_pb2.SubmitRequest(bundle=b"{not json " + secret_text.encode()),
                metadata=metadata(ngo, "submit-req-0002"),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A subscription: the gauge counts it while it is open.
        stream = stub.Subscribe(
            exchange_pb2.SubscribeRequest(from_beginning=True),
            metadata=metadata(platform, "subscribe-req-1"),
            timeout=60,
        )
        received: list[str] = []
        for response in stream:
            received += [d.object_id for d in response.deliveries]
            if len(received) >= len(good):
                break
        assert sorted(received) == sorted(o["id"] for o in good)
        assert scrape(server)[("exchange_subscriptions_open", ())] == 1
        stream.cancel()  # type: ignore[no-untyped-call]

    wait_until(
        lambda: scrape(server)[("exchange_subscriptions_open", ())] == 0,
        what="the subscription to close",
    )
    wait_until(lambda: bool(json_log.calls(SUBSCRIBE)), what="the Subscribe call's log line")
    # The relay counts a batch once the store has recorded it, which may come just
    # after subscribers have the records; and its next pass finds nothing waiting.
    wait_until(
        lambda: (
            scrape(server)[("exchange_relay_published_rows_total", ())] >= 4
            and scrape(server)[("exchange_relay_pending_rows", ())] == 0
        ),
        what="the relay to count its batch",
    )
    got = scrape(server)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return got[key] - before.get(key, 0.0)

    assert moved("exchange_submissions_total", outcome="partly") == 1
    assert moved("exchange_submissions_total", outcome="accepted") == 1  # the duplicate
    assert moved("exchange_submissions_total", outcome="refused") == 1
    assert moved("exchange_objects_accepted_total") == 4
    assert moved("exchange_objects_duplicate_total") == 1
    assert moved("exchange_objects_rejected_total", reason="confidence") == 1
    assert moved("exchange_relay_published_rows_total") == 4
    assert moved("exchange_relay_lag_seconds_count") == 4
    assert got[("exchange_relay_pending_rows", ())] == 0
    assert moved("exchange_deliveries_total") == 4
    # Once per message sent (for its oldest object), not per object.
    assert 1 <= moved("exchange_delivery_latency_seconds_count") <= 4
    assert moved("exchange_grpc_calls_total", method=SUBMIT, code="OK") == 2
    assert moved("exchange_grpc_calls_total", method=SUBMIT, code="INVALID_ARGUMENT") == 1
    assert moved("exchange_grpc_calls_total", method=SUBSCRIBE, code="CANCELLED") == 1
    assert got[("exchange_health_serving", ())] == 1
    # Every label value is one of a few fixed words: no ids, no submitted text.
    reasons = {dict(labels).get("reason") for name, labels in got if "rejected" in name}
    assert reasons <= {None, "confidence"}

    # The log: one JSON object per line, ids on the call lines, no secrets, no bodies.
    submits = json_log.calls(SUBMIT)
    assert [(r["request_id"], r["partner_id"], r["code"]) for r in submits] == [
        ("submit-req-0001", ngo.partner_id, "OK"),
        (submits[1]["request_id"], ngo.partner_id, "OK"),
        ("submit-req-0002", ngo.partner_id, "INVALID_ARGUMENT"),
    ]
    assert len(submits[1]["request_id"]) == 16  # none given: a fresh one
    (subscribed,) = json_log.calls(SUBSCRIBE)
    assert subscribed["request_id"] == "subscribe-req-1"
    assert subscribed["partner_id"] == platform.partner_id
    text = json_log.text
    for secret in (ngo.token, platform.token, secret_text, "Bearer"):
        assert secret not in text
    assert probe(server, "/readyz") == (200, "SERVING\n")


# -- health follows a real broker --------------------------------------------------------------


@pytest.mark.kafka
def test_health_follows_a_kafka_broker_that_stops_and_comes_back(
    tmp_path: Path, json_log: JsonLog
) -> None:
    # A broker of its own: the session's broker must keep running for other tests.
    broker = TansuBroker(port=free_port())
    bootstrap = broker.start()
    srv: ServerThread | None = None
    try:
        srv = ServerThread(
            settings_for(tmp_path / "data", bootstrap, metrics={"listen": "127.0.0.1:0"})
        ).start()
        target = srv.target

        def statuses() -> tuple[int, int]:
            return health_status(target), health_status(target, SERVICE_NAME)

        assert statuses() == (SERVING, SERVING)
        assert probe(srv, "/readyz") == (200, "SERVING\n")

        broker.stop()
        wait_until(lambda: statuses() == (NOT_SERVING, NOT_SERVING), what="NOT_SERVING")
        status, body = probe(srv, "/readyz")
        assert status == 503 and body.startswith("NOT_SERVING: bus: ")
        assert bootstrap in body
        down = scrape(srv)
        assert down[("exchange_health_serving", ())] == 0
        assert down[("exchange_dependency_up", (("dependency", "bus"),))] == 0
        assert down[("exchange_dependency_up", (("dependency", "store"),))] == 1
        assert down[("exchange_kafka_errors_total", (("operation", "metadata"),))] >= 1

        broker.start()  # the same port
        wait_until(lambda: statuses() == (SERVING, SERVING), what="SERVING again")
        assert probe(srv, "/readyz") == (200, "SERVING\n")
        assert scrape(srv)[("exchange_dependency_up", (("dependency", "bus"),))] == 1

        # One line per change, not one per check.
        changes = [
            r["message"]
            for r in json_log.lines()
            if r["logger"] == "exchange.health" and r["message"].startswith("health: ")
        ]
        assert len(changes) == 2
        assert changes[0].startswith("health: NOT_SERVING: bus: ")
        assert changes[1] == "health: SERVING again: the store and the bus answer"
    finally:
        if srv is not None:
            srv.stop()
        broker.stop()


# -- health follows a full disk ------------------------------------------------------------------


def test_health_follows_a_data_directory_that_fills_up_and_gets_room_again(
    json_log: JsonLog,
) -> None:
    """Defect 14: the store says it is full (ping fails while it is), health and
    /readyz follow, the store and health each log one line when it starts and one
    when it ends, and no log line carries a traceback meanwhile (the audit recorder,
    the relay and the checkpoints retry quietly)."""
    with small_disk(32 * MIB) as disk:
        srv = ServerThread(
            settings_for(disk.path / "data", metrics={"listen": "127.0.0.1:0"})
        ).start()
        try:
            ngo = srv.add_partner("harbor-light")
            target = srv.target
            with grpc.insecure_channel(target) as channel:
                stub = exchange_pb2_grpc.ExchangeServiceStub(channel)

                def submit(n: int) -> Any:
                    text = uuid.uuid4().hex * 2_000  # 64 KB each
                    objects = [
                        indicator(ngo.identity, n=n * 10 + i, description=text) for i in range(10)
                    ]
                    return stub.Submit(
                        exchange_pb2.SubmitRequest(bundle=orjson.dumps(bundle(objects))),
                        metadata=metadata(ngo),
                    )

                first = submit(0)
                assert first.accepted_count == 10
                first_id = first.results[0].object_id
                disk.fill()
                refused: grpc.RpcError | None = None
                for n in range(1, 40):
                    try:
                        submit(n)
                    except grpc.RpcError as exc:
                        refused = exc
                        break
                assert refused is not None, "the disk never filled up"
                assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
                assert "cannot store anything right now" in (refused.details() or "")
                # A look-up is recorded in the audit log: that append fails too, or
                # finds room; either way no INTERNAL, and no traceback in the log.
                codes = set()
                for _ in range(3):
                    try:
                        stub.GetObject(
                            exchange_pb2.GetObjectRequest(object_id=first_id),
                            metadata=metadata(ngo),
                        )
                        codes.add(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.add(exc.code())
                assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes

                wait_until(
                    lambda: (
                        health_status(target) == health_status(target, SERVICE_NAME) == NOT_SERVING
                    ),
                    what="NOT_SERVING",
                )
                status, body = probe(srv, "/readyz")
                assert status == 503 and body.startswith("NOT_SERVING: store: the data directory ")
                down = scrape(srv)
                assert down[("exchange_store_full", ())] == 1
                assert down[("exchange_dependency_up", (("dependency", "store"),))] == 0

                disk.free()
                wait_until(lambda: health_status(target) == SERVING, what="SERVING again")
                assert probe(srv, "/readyz") == (200, "SERVING\n")
                up = scrape(srv)
                assert up[("exchange_store_full", ())] == 0
                assert up[("exchange_dependency_up", (("dependency", "store"),))] == 1
                assert submit(99).accepted_count == 10
        finally:
            srv.stop()

    lines = json_log.lines()
    told = [r["message"] for r in lines if r["logger"] == "exchange.store._room"]
    assert len(told) == 2, told
    assert " is full (" in told[0] and " has room again after " in told[1]
    changes = [
        r["message"]
        for r in lines
        if r["logger"] == "exchange.health" and r["message"].startswith("health: ")
    ]
    assert len(changes) == 2, changes
    assert changes[0].startswith("health: NOT_SERVING: store: the data directory ")
    assert [r for r in lines if "exception" in r] == []


def test_readyz_is_not_ready_once_shutdown_begins(server: ServerThread) -> None:
    """Graceful shutdown sets NOT_SERVING for good; the monitor does not undo it."""
    assert server.server is not None
    srv = server.server
    assert probe(server, "/readyz") == (200, "SERVING\n")

    async def shut_health() -> None:
        await srv.health.enter_graceful_shutdown()

    server.run(shut_health())
    status, body = probe(server, "/readyz")
    assert status == 503 and body.startswith("NOT_SERVING")
    # A health check that finds both dependencies answering does not undo it.
    assert server.run(srv.monitor.check_once()) == ""
    assert health_status(server.target) == NOT_SERVING
    assert probe(server, "/readyz")[0] == 503

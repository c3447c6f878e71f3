"""Metrics, the request-id rule, log formats and the health monitor's rules, without
a gRPC server (the end-to-end checks are in tests/integration/test_observability.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from exchange.config import LoggingSettings, parse_listen
from exchange.errors import InvalidArgument, Unavailable
from exchange.health import HealthMonitor
from exchange.logs import PARTNER_ID, REQUEST_ID, TEXT_FORMAT, configure_logging
from exchange.metrics import Metrics, MetricsServer, rejection_reason
from exchange.model import ObjectOutcome, ObjectResult, Rejection
from exchange.services._logging import request_id_from

# -- labels stay bounded -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "label"),
    [
        ("", "object"),
        ("confidence", "confidence"),
        ("external_references[0].url", "external_references"),
        ("pattern", "pattern"),
        ("x_acme_secret_field", "custom_property"),
        ("allow_custom, custom_properties", "other"),
        ("Zephyrine lure text a partner typed", "other"),
        ("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "other"),
    ],
)
def test_rejection_reason_is_a_small_fixed_label(prop: str, label: str) -> None:
    assert rejection_reason(Rejection("indicator--x", prop, "why")) == label


def _result(outcome: ObjectOutcome, prop: str = "") -> ObjectResult:
    rejection = (
        Rejection("indicator--x", prop, "why") if outcome is ObjectOutcome.REJECTED else None
    )
    return ObjectResult(0, "indicator--x", "v", outcome, rejection=rejection)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest  # noqa: PLC0415

    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_submission_outcomes_and_object_counts() -> None:
    m = Metrics(process=False)
    acc, dup, rej = ObjectOutcome.ACCEPTED, ObjectOutcome.DUPLICATE, ObjectOutcome.REJECTED
    m.submitted([_result(acc), _result(dup)])
    m.submitted([_result(acc), _result(rej, "pattern")])
    m.submitted([_result(rej, "confidence"), _result(rej, "x_custom")])
    got = _samples(m)
    outcome = "exchange_submissions_total"
    assert got[(outcome, (("outcome", "accepted"),))] == 1
    assert got[(outcome, (("outcome", "partly"),))] == 1
    assert got[(outcome, (("outcome", "rejected"),))] == 1
    assert got[(outcome, (("outcome", "refused"),))] == 0  # known labels start at 0
    assert got[("exchange_objects_accepted_total", ())] == 2
    assert got[("exchange_objects_duplicate_total", ())] == 1
    for reason in ("pattern", "confidence", "custom_property"):
        assert got[("exchange_objects_rejected_total", (("reason", reason),))] == 1
    assert got[("exchange_kafka_errors_total", (("operation", "publish"),))] == 0


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.objects_accepted.inc(3)
    assert _samples(b)[("exchange_objects_accepted_total", ())] == 0


# -- the HTTP endpoint ---------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http://127.0.0.1)
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


@pytest.fixture
def readiness() -> list[tuple[bool, str]]:
    return [(True, "")]


@pytest.fixture
def endpoint(readiness: list[tuple[bool, str]]) -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1:0", lambda: readiness[-1])
    port = server.start()
    assert port == server.port != 0
    try:
        yield metrics, f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_endpoint_serves_metrics_and_probes(
    endpoint: tuple[Metrics, str], readiness: list[tuple[bool, str]]
) -> None:
    metrics, base = endpoint
    metrics.objects_accepted.inc(5)
    status, text = _get(f"{base}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["exchange_objects_accepted"].samples[0].value == 5
    assert "process_cpu_seconds" in families  # the process collector, on Linux
    assert _get(f"{base}/healthz") == (200, "ok\n")
    assert _get(f"{base}/readyz") == (200, "SERVING\n")
    readiness.append((False, "store: the database does not answer"))
    assert _get(f"{base}/readyz") == (503, "NOT_SERVING: store: the database does not answer\n")
    assert _get(f"{base}/nothing")[0] == 404


def test_endpoint_stops_and_frees_its_port() -> None:
    server = MetricsServer(Metrics(process=False), "127.0.0.1:0", lambda: (True, ""))
    port = server.start()
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # The same port can be bound again at once.
    again = MetricsServer(Metrics(process=False), f"127.0.0.1:{port}", lambda: (True, ""))
    assert again.start() == port
    again.stop()
    server.stop()  # twice is harmless


def test_listen_address_must_name_a_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in (":9090", "9090", "host:", "host:port", "127.0.0.1:70000"):
        with pytest.raises(InvalidArgument):
            parse_listen(bad)


def test_a_taken_port_is_reported() -> None:
    first = MetricsServer(Metrics(process=False), "127.0.0.1:0", lambda: (True, ""))
    port = first.start()
    try:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            MetricsServer(Metrics(process=False), f"127.0.0.1:{port}", lambda: (True, "")).start()
    finally:
        first.stop()


# -- request ids and log formats -----------------------------------------------------------


def test_request_id_is_the_callers_when_sane() -> None:
    assert request_id_from([("x-request-id", "req-42.a_b:c")]) == "req-42.a_b:c"
    assert request_id_from([("x-request-id", b"abc")]) == "abc"
    made = {request_id_from(md) for md in ([], None, [("x-request-id", "")])}
    assert len(made) == 3 and all(len(r) == 16 for r in made)
    # Too long, spaces, control characters, non-ASCII: replaced, never logged.
    for insane in ("a" * 65, "two words", "line\nbreak", "caf\u00e9"):
        got = request_id_from([("x-request-id", insane)])
        assert got != insane and len(got) == 16
    # Only x-request-id is read; other metadata never becomes the id.
    assert request_id_from([("authorization", "Bearer tix_secret")]) != "Bearer tix_secret"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_the_context_ids_and_exceptions() -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="debug"), stream=out)
    log = logging.getLogger("exchange.test")

    def inside_a_call() -> None:
        REQUEST_ID.set("req-1")
        PARTNER_ID.set("harbor-light-1a2b3c")
        log.info("submitted %d objects", 3)
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("it failed")

    import contextvars  # noqa: PLC0415

    contextvars.copy_context().run(inside_a_call)
    log.warning("outside any call")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first, failed, outside = lines
    assert {k: first[k] for k in ("level", "logger", "message", "request_id", "partner_id")} == {
        "level": "INFO",
        "logger": "exchange.test",
        "message": "submitted 3 objects",
        "request_id": "req-1",
        "partner_id": "harbor-light-1a2b3c",
    }
    assert first["time"].endswith("+00:00")
    assert "ValueError: bad" in failed["exception"]
    assert outside["request_id"] is None and outside["partner_id"] is None


@pytest.mark.usefixtures("restore_root_logger")
def test_text_format_is_unchanged_and_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=first)
    handler = configure_logging(LoggingSettings(format="text", level="warning"), stream=second)
    assert handler.formatter is not None and handler.formatter._fmt == TEXT_FORMAT
    logging.getLogger("exchange.test").warning("hello %s", "there")
    logging.getLogger("exchange.test").info("below the level")
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert line.endswith(" WARNING exchange.test: hello there")


# -- the health monitor's rules ------------------------------------------------------------


class Dependency:
    """A store or bus whose answer the test decides: the failure modes (an error, a
    hang) cannot be produced on demand with a real database in a unit test."""

    def __init__(self) -> None:
        self.mode = "ok"

    async def ping(self) -> None:
        if self.mode == "down":
            raise Unavailable("connection refused")
        if self.mode == "hang":
            await asyncio.Event().wait()


async def _status(health: health_aio.HealthServicer, service: str = "") -> int:
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), None)
    return int(response.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_monitor_follows_dependencies_logs_changes_once_and_respects_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, bus = Dependency(), Dependency()
    health = health_aio.HealthServicer()
    await health.set("svc", SERVING)
    metrics = Metrics(process=False)
    monitor = HealthMonitor(
        store, bus, health, services=("svc",), interval_s=0.01, timeout_s=0.2, metrics=metrics
    )
    caplog.set_level(logging.INFO, logger="exchange.health")
    assert await monitor.check_once() == ""
    bus.mode = "down"
    for _ in range(3):
        assert await monitor.check_once() == "bus: connection refused"
    assert await _status(health) == await _status(health, "svc") == NOT_SERVING
    assert monitor.reason == "bus: connection refused" and monitor.failing == ("bus",)
    assert metrics.dependency_up.labels("bus")._value.get() == 0
    store.mode = "hang"  # a hung dependency times out; the check still returns
    assert await monitor.check_once() == "store: no answer within 0.2 s; bus: connection refused"
    store.mode = bus.mode = "ok"
    assert await monitor.check_once() == ""
    assert await _status(health) == await _status(health, "svc") == SERVING
    assert metrics.serving._value.get() == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "exchange.health"]
    assert lines == [
        "health: NOT_SERVING: bus: connection refused",
        "health: NOT_SERVING: store: no answer within 0.2 s; bus: connection refused",
        "health: SERVING again: the store and the bus answer",
    ]
    # Graceful shutdown: nothing sets SERVING again.
    monitor.start()
    await health.enter_graceful_shutdown()
    await monitor.stop()
    await monitor.check_once()
    assert await _status(health) == NOT_SERVING
    assert monitor.reason == "the server is shutting down"

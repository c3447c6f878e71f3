"""Prometheus metrics, and the small HTTP endpoint that serves them with the probes.

``Metrics`` owns its instruments and its own ``CollectorRegistry`` (never the
library's global one), so several servers in one process (the tests) each count
their own. The modules that count take a ``Metrics`` in their constructor and
default to a fresh one, which nobody reads.

Every label has a small, fixed set of values: outcomes, Kafka operations, gRPC
method names the server registered, status codes, and for rejected objects the
rejected STIX property when it is a standard one (else a category). No label ever
holds submitted text, an id or a partner name. docs/observability.md lists them.

``MetricsServer`` serves ``GET /metrics``, ``/healthz`` and ``/readyz`` over HTTP
(the standard library's WSGI server, one daemon thread, a thread per request).
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

from exchange.config import parse_listen
from exchange.errors import Unavailable
from exchange.model import ObjectOutcome, ObjectResult, Rejection, StoredObject

__all__ = [
    "KAFKA_OPERATIONS",
    "SUBMISSION_OUTCOMES",
    "VALIDATION_PATHS",
    "Metrics",
    "MetricsServer",
    "rejection_reason",
]

log = logging.getLogger(__name__)

# Bundle-level outcomes of a Submit (one bundle of a SubmitStream counts as one).
SUBMISSION_OUTCOMES = ("accepted", "partly", "rejected", "refused", "failed")
KAFKA_OPERATIONS = ("connect", "metadata", "publish", "read")
DEPENDENCIES = ("store", "bus")
VALIDATION_PATHS = ("fast", "full")
RETENTION_REASONS = ("retention", "expired")

# Seconds: from milliseconds (a live delivery) to an hour (a backlog, a replay).
_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)
_CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)

# The rejected-objects label: a standard STIX 2.1 property name (the first part of
# the path a rejection names), "custom_property" for x_... names, "object" when the
# object as a whole was refused, "other" for anything else. Fixed, so the label set
# stays small whatever partners submit.
_STIX_PROPERTIES = frozenset(
    {
        "account_login",
        "aliases",
        "confidence",
        "contact_information",
        "count",
        "created",
        "created_by_ref",
        "definition",
        "definition_type",
        "description",
        "extensions",
        "external_references",
        "first_observed",
        "first_seen",
        "granular_markings",
        "id",
        "identity_class",
        "indicator_types",
        "infrastructure_types",
        "kill_chain_phases",
        "labels",
        "lang",
        "last_observed",
        "last_seen",
        "modified",
        "name",
        "number_observed",
        "object_marking_refs",
        "object_refs",
        "observed_data_refs",
        "pattern",
        "pattern_type",
        "pattern_version",
        "published",
        "relationship_type",
        "report_types",
        "revoked",
        "roles",
        "sectors",
        "sighting_of_ref",
        "source_ref",
        "spec_version",
        "start_time",
        "stop_time",
        "summary",
        "target_ref",
        "type",
        "url",
        "valid_from",
        "valid_until",
        "value",
        "where_sighted_refs",
    }
)
_PROPERTY_HEAD = re.compile(r"[A-Za-z0-9_-]*")


def rejection_reason(rejection: Rejection) -> str:
    """The bounded label of a rejected object (see ``_STIX_PROPERTIES``)."""
    prop = rejection.property.strip()
    if not prop:
        return "object"
    match = _PROPERTY_HEAD.match(prop)
    head = match.group(0) if match else ""
    if head in _STIX_PROPERTIES:
        return head
    if head.startswith("x_"):
        return "custom_property"
    return "other"


class Metrics:
    """The exchange's instruments, registered in ``self.registry``."""

    def __init__(self, *, process: bool = True) -> None:
        r = self.registry = CollectorRegistry()
        if process:
            # CPU, memory, open files of this process (read from /proc where it exists).
            ProcessCollector(registry=r)

        # -- Submit ----------------------------------------------------------------
        self.submissions = Counter(
            "exchange_submissions",
            "Bundles submitted, by outcome: accepted (no object rejected), partly (some"
            " rejected), rejected (all rejected), refused (the bundle or its audience was"
            " invalid; nothing stored), failed (a dependency failed)",
            ["outcome"],
            registry=r,
        )
        self.submissions_in_progress = Gauge(
            "exchange_submissions_in_progress",
            "Bundles being validated and stored right now (a graceful shutdown waits for them)",
            registry=r,
        )
        self.objects_accepted = Counter(
            "exchange_objects_accepted", "Object versions accepted and stored", registry=r
        )
        self.objects_duplicate = Counter(
            "exchange_objects_duplicate",
            "Object versions submitted again (already held; nothing stored)",
            registry=r,
        )
        self.objects_rejected = Counter(
            "exchange_objects_rejected",
            "Objects rejected, by the STIX property at fault (or object, custom_property, other)",
            ["reason"],
            registry=r,
        )
        self.validated_objects = Counter(
            "exchange_validated_objects",
            "Objects validated, by path: fast (the exchange's own checks, proven equal to"
            " stix2's) or full (stix2; the fast path could not decide, e.g. a rejection)",
            ["path"],
            registry=r,
        )
        self.limit_refusals = Counter(
            "exchange_limit_refusals",
            "Requests, objects and streams refused or ended because they reached a limit,"
            " by the limit's setting (e.g. limits.max_pattern_comparisons)",
            ["limit"],
            registry=r,
        )
        # -- relay -----------------------------------------------------------------
        self.relay_published = Counter(
            "exchange_relay_published_rows",
            "Outbox rows (accepted object versions) published to the bus",
            registry=r,
        )
        self.relay_pending = Gauge(
            "exchange_relay_pending_rows",
            "Outbox rows the relay found waiting at its last pass (at most one batch)",
            registry=r,
        )
        self.relay_oldest_pending = Gauge(
            "exchange_relay_oldest_pending_seconds",
            "Seconds the oldest waiting outbox row had waited at the relay's last pass"
            " (0: nothing waiting)",
            registry=r,
        )
        self.relay_lag = Histogram(
            "exchange_relay_lag_seconds",
            "Seconds from an object's acceptance to the bus acknowledging its publication",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_set_aside = Counter(
            "exchange_relay_set_aside_rows",
            "Outbox rows set aside because the bus refused their records (too large for"
            " the broker); the rest of the outbox flows on (see the log for each)",
            registry=r,
        )
        # -- Subscribe -------------------------------------------------------------
        self.subscriptions_open = Gauge(
            "exchange_subscriptions_open", "Subscribe streams open now", registry=r
        )
        self.deliveries = Counter(
            "exchange_deliveries", "Objects handed to Subscribe streams", registry=r
        )
        self.delivery_latency = Histogram(
            "exchange_delivery_latency_seconds",
            "Seconds from an object's acceptance to its hand-over to a Subscribe stream"
            " (replays from history land in the top buckets)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.subscriptions_stalled = Counter(
            "exchange_subscriptions_stalled",
            "Subscribe streams ended because their subscriber took no message for"
            " subscriptions.stall_timeout_s",
            registry=r,
        )
        # -- retention -------------------------------------------------------------
        self.retention_erased = Counter(
            "exchange_retention_erased",
            "Copies of objects erased by retention, by reason: retention (past the"
            " maximum age its TLP or a community sets) or expired (an indicator past its"
            " valid_until)",
            ["reason"],
            registry=r,
        )
        self.retention_runs = Counter(
            "exchange_retention_runs",
            "Retention runs of this process, by outcome (done, failed)",
            ["outcome"],
            registry=r,
        )
        # -- Kafka, health, gRPC ---------------------------------------------------
        self.store_full = Gauge(
            "exchange_store_full",
            "1 while the store has no room left (disk or database full): submissions are"
            " refused with UNAVAILABLE and health says NOT_SERVING",
            registry=r,
        )
        self.kafka_errors = Counter(
            "exchange_kafka_errors",
            "Kafka client errors, by operation (connect, metadata, publish, read)",
            ["operation"],
            registry=r,
        )
        self.serving = Gauge(
            "exchange_health_serving",
            "1 while the gRPC health status is SERVING, 0 while NOT_SERVING",
            registry=r,
        )
        self.dependency_up = Gauge(
            "exchange_dependency_up",
            "1 if the dependency answered the last health check, else 0",
            ["dependency"],
            registry=r,
        )
        self.grpc_calls = Counter(
            "exchange_grpc_calls",
            "Finished gRPC calls, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "exchange_grpc_call_duration_seconds",
            "Duration of finished gRPC calls, by method (a stream: its whole life)",
            ["method"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.taxii_requests = Counter(
            "exchange_taxii_requests",
            "Answered TAXII requests, by method, route (its pattern) and HTTP status",
            ["method", "route", "status"],
            registry=r,
        )
        self.taxii_duration = Histogram(
            "exchange_taxii_request_duration_seconds",
            "Duration of answered TAXII requests, by method and route (its pattern)",
            ["method", "route"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        # Known label values appear at 0 from the start, so rate() sees the first one.
        for outcome in SUBMISSION_OUTCOMES:
            self.submissions.labels(outcome)
        for path in VALIDATION_PATHS:
            self.validated_objects.labels(path)
        for operation in KAFKA_OPERATIONS:
            self.kafka_errors.labels(operation)
        for reason in RETENTION_REASONS:
            self.retention_erased.labels(reason)
        for outcome in ("done", "failed"):
            self.retention_runs.labels(outcome)
        for dependency in DEPENDENCIES:
            self.dependency_up.labels(dependency).set(1)
        self.serving.set(1)

    # -- helpers used by the modules that count -------------------------------------

    def submitted(self, results: Sequence[ObjectResult]) -> None:
        """Count one processed bundle and its objects."""
        accepted = duplicate = rejected = 0
        for result in results:
            if result.outcome is ObjectOutcome.ACCEPTED:
                accepted += 1
            elif result.outcome is ObjectOutcome.DUPLICATE:
                duplicate += 1
            else:
                rejected += 1
                if result.rejection is not None:
                    self.objects_rejected.labels(rejection_reason(result.rejection)).inc()
                    if result.rejection.limit:
                        self.limit_refusals.labels(result.rejection.limit).inc()
        if accepted:
            self.objects_accepted.inc(accepted)
        if duplicate:
            self.objects_duplicate.inc(duplicate)
        if not rejected:
            outcome = "accepted"
        elif rejected == len(results):
            outcome = "rejected"
        else:
            outcome = "partly"
        self.submissions.labels(outcome).inc()

    def delivered(self, objects: Iterable[StoredObject], now: float | None = None) -> None:
        """Count the objects of one message handed to a stream, and how long after
        acceptance its oldest one went: one observation per message, not per object
        (with 100 streams at 1,000 objects/s, a histogram update per delivery cost
        ~8% of the event loop)."""
        now = time.time() if now is None else now
        count = 0
        oldest = now
        for stored in objects:
            oldest = min(oldest, stored.accepted_at)
            count += 1
        if count:
            self.deliveries.inc(count)
            self.delivery_latency.observe(now - oldest)

    def relay_pass(self, pending: Sequence[StoredObject], now: float | None = None) -> None:
        """What one relay pass found waiting (oldest first, at most one batch)."""
        now = time.time() if now is None else now
        self.relay_pending.set(len(pending))
        oldest = max(0.0, now - pending[0].accepted_at) if pending else 0.0
        self.relay_oldest_pending.set(oldest)

    def relayed(self, published: Sequence[StoredObject], now: float | None = None) -> None:
        """Rows the bus acknowledged."""
        now = time.time() if now is None else now
        for stored in published:
            self.relay_lag.observe(max(0.0, now - stored.accepted_at))
        self.relay_published.inc(len(published))


# -- the HTTP endpoint ---------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Every scrape and probe would be a line; debug only.
        log.debug("metrics http: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (socket.getfqdn), which can
        # wait on DNS; the WSGI environment only needs the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` (Prometheus text format from ``metrics.registry``),
    ``GET /healthz`` (200 while the process runs) and ``GET /readyz`` (200 when
    ``ready()`` says so, else 503 with its reason). ``ready`` is called on the HTTP
    thread; it returns (ready, reason)."""

    def __init__(
        self, metrics: Metrics, listen: str, ready: Callable[[], tuple[bool, str]]
    ) -> None:
        self._host, self._requested_port = parse_listen(listen, "metrics.listen")
        self._metrics_app: WsgiApp = make_wsgi_app(metrics.registry)
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # The bound port once started (useful with port 0).
        self.port = 0

    def start(self) -> int:
        server_class = _Server6 if ":" in self._host else _Server
        try:
            server = make_server(
                self._host,
                self._requested_port,
                self._app,
                server_class=server_class,
                handler_class=_Handler,
            )
        except OSError as exc:
            raise Unavailable(
                f"cannot serve metrics on {self._host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        assert isinstance(server, _Server)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics and probes on http://%s:%d/metrics", self._host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving and close the socket (blocks for up to ~0.2 s)."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5.0)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "GET only\n")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            try:
                ready, reason = self._ready()
            except Exception as exc:
                log.warning("readiness check failed", exc_info=True)
                ready, reason = False, f"readiness check failed: {type(exc).__name__}"
            if ready:
                return _text(start_response, "200 OK", "SERVING\n")
            return _text(start_response, "503 Service Unavailable", f"NOT_SERVING: {reason}\n")
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode("utf-8", "replace")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]

"""Assembles the exchange: store, bus, relay, pipeline and the grpc.aio server
with health checking and reflection."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import grpc
from exchange_protocol.pb import admin_pb2 as admin_pb
from exchange_protocol.pb import admin_pb2_grpc as admin_grpc
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import audit_pb2_grpc as audit_grpc
from exchange_protocol.pb import exchange_pb2 as pb
from grpc_health.v1 import _async as health_aio  # the asyncio servicer (health.aio)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exchange import policy
from exchange._erased import ErasedCopies
from exchange._tasks import cancel_and_wait
from exchange.audit.log import AuditLog
from exchange.audit.mirror import AuditMirror
from exchange.audit.recorder import AuditRecorder
from exchange.audit.signer import Signer
from exchange.auth import Authenticator, RegistryWatch
from exchange.bus import Bus
from exchange.bus.kafka import KafkaBus
from exchange.bus.local import LocalBus
from exchange.config import Settings, TlsSettings, parse_listen
from exchange.errors import InvalidArgument, Unavailable
from exchange.health import HealthMonitor
from exchange.ingest import Ingest
from exchange.metrics import Metrics, MetricsServer
from exchange.model import Erasure
from exchange.quota import PartnerQuota
from exchange.registry import Registry
from exchange.relay import Relay
from exchange.retention import RetentionSchedule
from exchange.services._admission import Admission, CallKind
from exchange.services._logging import CallLog
from exchange.services.admin import AdminService
from exchange.services.audit import AuditService
from exchange.services.exchange import ExchangeService, add_exchange_service
from exchange.store import open_store
from exchange.subscriptions import Subscriptions
from exchange.taxii import TaxiiServer
from exchange.validation import Validator

__all__ = ["SHUTDOWN_SLACK_S", "ExchangeServer", "check_listen", "is_loopback"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["AdminService"].full_name
AUDIT_SERVICE_NAME = audit_pb.DESCRIPTOR.services_by_name["AuditService"].full_name
# Room for the largest bundle we accept plus protobuf framing.
_MESSAGE_SLACK = 1024 * 1024
# On shutdown, publishing what is left in the outbox may take this long (the rest is
# published by the next start, or by another replica).
_RELAY_FLUSH_S = 10.0
# How long `exchange serve` gives its shutdown beyond shutdown_grace_s (the relay's flush,
# the last audit entries and checkpoint) before it exits anyway.
SHUTDOWN_SLACK_S = 20.0
# The largest message the server sends (and the SDK sends or receives).
_TRANSPORT_LIMIT = 64 * 1024 * 1024


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT names a loopback address (only this machine can connect)."""
    host, _ = parse_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(settings: Settings) -> None:
    """Refuse plain gRPC (or TAXII) on an address other machines can reach, unless asked for."""
    if settings.tls.cert_file or settings.insecure:
        return
    if settings.taxii_listen and not is_loopback(settings.taxii_listen):
        raise InvalidArgument(
            f"refusing to serve TAXII on {settings.taxii_listen} without TLS: set"
            " tls.cert_file and tls.key_file, or insecure = true behind a TLS-terminating proxy"
        )
    if is_loopback(settings.listen):
        return
    raise InvalidArgument(
        f"refusing to listen on {settings.listen} without TLS: tokens and indicators would"
        " cross the network in clear text. Set tls.cert_file and tls.key_file (or"
        " --tls-cert/--tls-key), or pass --insecure (insecure = true) when a"
        " TLS-terminating proxy or a private network protects the traffic"
    )


def _bus(settings: Settings, metrics: Metrics | None = None) -> Bus:
    if settings.kafka.bootstrap:
        return KafkaBus(settings.kafka, settings.topic_prefix, metrics=metrics)
    return LocalBus(settings.data_path / "bus.sqlite3")


def _server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise Unavailable(f"cannot read the {what} {path}: {exc.strerror}") from exc

    client_ca = read(tls.client_ca_file, "client CA file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(read(tls.key_file, "TLS key file"), read(tls.cert_file, "TLS certificate file"))],
        root_certificates=client_ca,
        # gRPC can require and verify client certificates, or not ask for them at all.
        require_client_auth=client_ca is not None,
    )


class ExchangeServer:
    """One exchange process. ``start()`` returns the port it listens on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = open_store(settings, self.metrics)
        self.bus = _bus(settings, self.metrics)
        self.validator = Validator(settings.validation_workers, self.metrics)
        self.recorder = AuditRecorder(self.store, delivery_span_s=settings.audit.delivery_span_s)
        self.relay = Relay(
            self.store,
            self.bus,
            batch_size=settings.relay.batch_size,
            batch_bytes=settings.relay.batch_bytes,
            poll_interval_s=settings.relay.poll_interval_s,
            metrics=self.metrics,
        )
        # Which copies were erased: records of them still on the bus are held back.
        self.erased = ErasedCopies(self.store)
        self.subscriptions = Subscriptions(
            self.store,
            self.bus,
            max_open=settings.subscriptions.max_open,
            max_open_per_partner=settings.subscriptions.max_open_per_partner,
            max_batch=settings.subscriptions.max_batch,
            max_batch_bytes=settings.subscriptions.max_batch_bytes,
            tail_window=settings.subscriptions.tail_window,
            tail_window_bytes=settings.subscriptions.tail_window_bytes,
            heartbeat_s=settings.subscriptions.heartbeat_s,
            stall_timeout_s=settings.subscriptions.stall_timeout_s,
            recorder=self.recorder,
            metrics=self.metrics,
            erased=self.erased,
        )
        self.ingest = Ingest(self.store, self.validator, settings.limits, metrics=self.metrics)
        # The live tail reads the quiet topics when this process's relay publishes to them
        # (and polls for another replica's relay only while this one does not lead).
        self.relay.on_published(self.subscriptions.tail.relayed)
        self.relay.on_erasures_published(self._held_back)
        self.subscriptions.tail.follow_local_relay(lambda: self.relay.leading is True)
        # Erases what retention says is due, every retention.interval_s, in one process
        # among those sharing the store (the "retention" lease).
        self.retention = RetentionSchedule(
            self.store, settings.retention, metrics=self.metrics, on_erased=self._erased
        )
        self.registry_watch = RegistryWatch(self.store)
        self.registry_watch.on_change(self.subscriptions.wake_all)
        # A partner's calls in progress, counted before their requests are read; TAXII
        # requests count against the same quotas.
        self.quotas = {
            CallKind.SUBMISSION: PartnerQuota(
                settings.limits.max_submissions_per_partner,
                setting="limits.max_submissions_per_partner",
                what="submissions",
                metrics=self.metrics,
                at_once=settings.limits.submissions_at_once_per_partner,
            ),
            CallKind.STREAM: PartnerQuota(
                settings.subscriptions.max_open_per_partner,
                setting="subscriptions.max_open_per_partner",
                what="open subscriptions",
                metrics=self.metrics,
                hint="close one before opening another (a stream whose messages you do"
                " not read stays open until you read them or close its connection)",
            ),
            CallKind.CALL: PartnerQuota(
                settings.limits.max_calls_per_partner,
                setting="limits.max_calls_per_partner",
                what="calls (look-ups, audit and admin calls)",
                metrics=self.metrics,
            ),
        }
        self.admission = Admission(
            self.store,
            self.quotas,
            self.registry_watch,
            certificates=bool(settings.tls.client_ca_file),
        )
        self.auth = Authenticator(self.store, self.registry_watch)
        self.registry = Registry(self.store, on_change=self.registry_watch.bump)
        self.health = health_aio.HealthServicer()
        # NOT_SERVING while the store or the bus does not answer (exchange/health.py).
        self.monitor = HealthMonitor(
            self.store, self.bus, self.health, services=(SERVICE_NAME,), metrics=self.metrics
        )
        self.metrics_server = (
            MetricsServer(self.metrics, settings.metrics.listen, self.monitor.readiness)
            if settings.metrics.listen
            else None
        )
        self.taxii = (
            TaxiiServer(
                settings.taxii_listen,
                auth=self.auth,
                ingest=self.ingest,
                store=self.store,
                recorder=self.recorder,
                calls=self.quotas[CallKind.CALL],
                submissions=self.quotas[CallKind.SUBMISSION],
                metrics=self.metrics,
                tls=settings.tls,
                max_bundle_bytes=settings.limits.max_bundle_bytes,
                max_connections=settings.taxii.max_connections,
                max_connections_per_address=settings.taxii.max_connections_per_address,
                shutdown_grace_s=settings.shutdown_grace_s,
            )
            if settings.taxii_listen
            else None
        )
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.signer: Signer | None = None
        self.audit_log: AuditLog | None = None

    async def start(self) -> int:
        check_listen(self.settings)
        # The key first: an exchange that cannot sign its audit log does not start.
        self.signer = Signer.load_or_create(self.settings.signing_key_path)
        self.audit_log = AuditLog(self.store, self.signer, self.settings.audit.origin)
        await self.store.open()
        await self._check_signing_key(self.signer)
        await self.bus.start()
        await self.bus.ensure_topics(policy.SHARED_TOPICS)
        await self.validator.warm_up()
        self.registry_watch.start()
        await self.erased.start()
        self.recorder.start()
        self._relay_task = asyncio.create_task(self.relay.run(), name="relay")
        self._tasks.append(asyncio.create_task(self._checkpoints(), name="audit-checkpoints"))
        if self.settings.kafka.bootstrap:
            mirror = AuditMirror(self.store, self.bus)
            self._tasks.append(asyncio.create_task(mirror.run(), name="audit-mirror"))
        if self.retention.enabled:
            self._tasks.append(asyncio.create_task(self.retention.run(), name="retention"))

        # A request is read whole before any handler runs: what one call may make the
        # server hold. Bundles a little over max_bundle_bytes still reach the pipeline,
        # which says why they are refused; larger ones get the transport's refusal.
        receive_limit = self.settings.limits.max_bundle_bytes + _MESSAGE_SLACK
        server = grpc.aio.server(
            # A request id and one log line per call (exchange/services/_logging.py).
            # Admission (per-partner limits) runs before a call's request is read.
            interceptors=(CallLog(self.metrics), self.admission),
            options=[
                # Never share the port with another process (gRPC's default on Linux):
                # a second exchange on the same port must fail, not split the traffic.
                ("grpc.so_reuseport", 0),
                # No bandwidth-delay probing: it grows every stream's receive window, so
                # calls refused before their request is read (exchange.services._admission)
                # still had megabytes each buffered for them (forty 15 MB submissions from
                # one partner: 1.27 GB with probing, 0.45 GB without). A stream reading a
                # message still gets a window for all of it.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.max_receive_message_length", receive_limit),
                ("grpc.max_send_message_length", _TRANSPORT_LIMIT),
                # Connections are recycled: the one way to let go of a subscriber that
                # stopped reading (its last message cannot be taken back), and of
                # whatever its stream held, within connection_max_age_s + grace.
                ("grpc.max_connection_age_ms", round(self.settings.connection_max_age_s * 1000)),
                (
                    "grpc.max_connection_age_grace_ms",
                    round(self.settings.connection_grace_s * 1000),
                ),
                # Notice dead subscribers (and let them notice us) within a minute.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        service = ExchangeService(
            self.auth,
            self.ingest,
            self.subscriptions,
            self.store,
            self.recorder,
            on_erased=self._erased,
        )
        add_exchange_service(service, server)
        admin_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.auth, self.registry), server
        )
        assert self.audit_log is not None and self.signer is not None
        audit_grpc.add_AuditServiceServicer_to_server(
            AuditService(self.auth, self.store, self.audit_log, self.signer), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                AUDIT_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            if self.settings.tls.cert_file:
                credentials = _server_credentials(self.settings.tls)
                self.port = server.add_secure_port(self.settings.listen, credentials)
            else:
                self.port = server.add_insecure_port(self.settings.listen)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise Unavailable(
                f"cannot listen on {self.settings.listen}: the address is in use or not"
                " a local HOST:PORT; choose another with --listen HOST:PORT (or"
                " EXCHANGE_LISTEN)"
            )
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.monitor.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        await self._start_taxii()
        return self.port

    async def _start_taxii(self) -> None:
        if self.taxii is None:
            return
        try:
            port = await self.taxii.start()
        except Unavailable as exc:
            if self.settings.taxii.listen != "default":
                raise
            # The laptop default is a convenience: a second exchange on this machine
            # still starts, without TAXII.
            log.warning("%s; serving gRPC only", exc.message)
            self.taxii = None
            return
        log.info("TAXII 2.1 listening on %s (port %d)", self.settings.taxii_listen, port)

    async def _check_signing_key(self, signer: Signer) -> None:
        """Every process that signs this log's checkpoints must use the same key:
        checkpoints signed with another one would not verify."""
        mine = signer.public_key_pem.encode()
        recorded = await self.store.audit_public_key(mine)
        if recorded != mine:
            raise Unavailable(
                f"the audit signing key {signer.path} is not the key that signs this"
                " audit log's checkpoints (recorded at the first start): give every"
                " replica the same audit.signing_key_file, or restore the original key"
            )

    async def _checkpoints(self) -> None:
        """Sign a checkpoint whenever the audit log has grown, every interval."""
        assert self.audit_log is not None
        while True:
            await asyncio.sleep(self.settings.audit.checkpoint_interval_s)
            try:
                await self.audit_log.checkpoint()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                # The store is down or full (health says so): no traceback each time.
                log.warning("audit: signing a checkpoint failed: %s", exc.message)
            except Exception:
                log.warning("audit: signing a checkpoint failed", exc_info=True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def _erased(self, erasures: list[Erasure]) -> None:
        """Erasures this process made (Erase calls, retention): records of them are held
        back at once, and the relay publishes their tombstones and notices now rather
        than at its next poll."""
        if erasures:
            self._held_back(erasures)
            self.relay.wake()

    def _held_back(self, erasures: list[Erasure]) -> None:
        """Streams of this process deliver no record of these erased versions (still on
        the bus before compaction, or held by the live tail)."""
        for erasure in erasures:
            self.erased.add(erasure)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (SIGTERM): report NOT_SERVING, take no new calls, end open
        streams with Unavailable (clients resume from their last cursor, on another
        replica), let in-flight submissions finish within ``grace_s`` (default
        ``shutdown_grace_s``; then they are cancelled, and their transactions roll
        back unacknowledged), publish what was accepted, sign a last checkpoint."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.monitor.stop()
        await self.health.enter_graceful_shutdown()
        self.subscriptions.begin_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self.taxii is not None:
            await self.taxii.stop()
        # The streams have ended with the calls; stop their shared bus reader.
        await self.subscriptions.close()
        await self.erased.close()
        await self.registry_watch.close()
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        if self._relay_task is not None:
            await cancel_and_wait(self._relay_task)
            try:
                async with asyncio.timeout(_RELAY_FLUSH_S):
                    while await self.relay.flush_once():
                        pass
            except Exception:
                # The rows stay in the outbox and are published on the next start.
                log.warning("relay could not flush on shutdown", exc_info=True)
        self.ingest.close()
        self.validator.close()
        # Kept up while calls drain: /readyz answers 503, the last scrape sees the end.
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        try:
            # The streams' last entries, and a checkpoint over everything recorded.
            await self.recorder.close()
            if self.audit_log is not None:
                await self.audit_log.checkpoint()
        except Exception:
            log.warning("audit: could not record or sign on shutdown", exc_info=True)
        await self.bus.close()
        await self.store.close()

"""The Kafka bus (aiokafka): Apache Kafka in production, Tansu in the tests.

Topic names given to the bus are logical (``clear``, ``partner.p1``); on the
broker each lives under the configured prefix (``tix.clear``), so one cluster
can serve several exchanges and tests can use a fresh prefix each.

What the code works around (all measured against Tansu 0.6.0, harmless on Kafka):

- Tansu creates a topic on any metadata request that names it, so the bus never
  lets a client ask about a topic it has not seen in a full listing
  (``describe_topics(None)``); unknown topics raise ``NotFound`` instead.
- Tansu's end offsets can be wrong and can make a consumer replay old records,
  so readers never seek to the end; they keep the next expected offset of each
  partition and drop anything below it.
- Tansu cannot run the idempotent producer: ``enable_idempotence`` is a setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTp
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from exchange._tasks import retrieve_failure
from exchange.bus import BusRecord, Placed, ReadRecord, Refused, TopicPartition, record_bytes
from exchange.bus.local import check_topic_name
from exchange.config import KafkaSettings
from exchange.errors import ExchangeError, InvalidArgument, NotFound, Unavailable
from exchange.metrics import Metrics

__all__ = ["KafkaBus", "KafkaReader", "client_options"]

log = logging.getLogger(__name__)

# Kafka's limit on a topic name, prefix included.
_MAX_TOPIC_LENGTH = 249
# How long ensure_topics waits for new topics to appear in metadata.
_TOPIC_READY_TIMEOUT_S = 10.0
# Measured against Tansu, 1 KB records in batches of 1000: linger 2 ms costs no
# single-record latency over 0 ms (5 ms did: p50 8 ms instead of 5 ms), and 256 KiB
# batches publish ~1.5x faster than aiokafka's default 16 KiB.
_LINGER_MS = 2
_MAX_BATCH_BYTES = 256 * 1024

# Room beyond kafka.max_record_bytes for the record batch around one record.
_RECORD_BATCH_ROOM = 64 * 1024
# A reader's smallest fetch: below it, round trips rather than bytes bound a catch-up.
_MIN_FETCH_BYTES = 64 * 1024

# A topic the exchange always has (policy.SHARED_TOPICS), asked about by ping().
_PING_TOPIC = "clear"
# Topics created with the delete policy, not compacted: the audit mirror's
# (exchange.audit.mirror.AUDIT_TOPIC; the bus does not import the audit package).
_DELETE_POLICY_TOPICS = frozenset({"audit"})
_SECURITY_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
_SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
_CONFIG_ERRORS = (InvalidTopicError, InvalidPartitionsError, InvalidReplicationFactorError)
# A health check's metadata round trip gives up after this long.
_PING_TIMEOUT_S = 5.0
# What each failing step counts as in exchange_kafka_errors_total{operation}.
_OPERATIONS = {
    "creating topics": "metadata",
    "reading metadata": "metadata",
    "publishing": "publish",
    "opening a reader": "read",
    "reading": "read",
}
_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_VALUE = itemgetter(1)  # of a (name, value) header


def client_options(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Connection options shared by the producer, the consumers and the admin client."""
    bootstrap = [s.strip() for s in settings.bootstrap.split(",") if s.strip()]
    if not bootstrap:
        raise InvalidArgument("kafka.bootstrap is empty: give host:port[,host:port...]")
    protocol = settings.security_protocol.upper()
    if protocol not in _SECURITY_PROTOCOLS:
        raise InvalidArgument(
            f"kafka.security_protocol {settings.security_protocol!r} is not one of "
            f"{', '.join(sorted(_SECURITY_PROTOCOLS))}"
        )
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "security_protocol": protocol,
    }
    if protocol in {"SSL", "SASL_SSL"}:
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=settings.ssl_cafile or None,
                certfile=settings.ssl_certfile or None,
                keyfile=settings.ssl_keyfile or None,
            )
        except (OSError, ValueError) as exc:
            files = ", ".join(
                f"{name} {value!r}"
                for name, value in (
                    ("kafka.ssl_cafile", settings.ssl_cafile),
                    ("kafka.ssl_certfile", settings.ssl_certfile),
                    ("kafka.ssl_keyfile", settings.ssl_keyfile),
                )
                if value
            )
            raise InvalidArgument(f"Kafka TLS files ({files or 'system CAs'}): {exc}") from exc
    if protocol.startswith("SASL_"):
        mechanism = (settings.sasl_mechanism or "PLAIN").upper()
        if mechanism not in _SASL_MECHANISMS:
            raise InvalidArgument(
                f"kafka.sasl_mechanism {settings.sasl_mechanism!r} is not one of "
                f"{', '.join(sorted(_SASL_MECHANISMS))}"
            )
        # aiokafka takes the SCRAM credentials in the sasl_plain_* arguments too.
        options["sasl_mechanism"] = mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password
    return options


class KafkaBus:
    """The bus over a Kafka cluster; topics live under ``<topic_prefix>.``."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic_prefix: str,
        client_id: str = "exchange",
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics(process=False)
        self._options = client_options(settings, client_id)
        self._bootstrap = settings.bootstrap
        self._prefix = f"{topic_prefix}."
        self._producer: Any = None
        self._admin: Any = None
        # logical topic -> partitions; filled from full listings, never by naming a
        # topic in a metadata request (that would create it on Tansu).
        self._partitions: dict[str, list[int]] = {}
        self._readers: set[KafkaReader] = set()
        # Every consumer from creation until its stop() has finished, and the stops in
        # flight: close() ends them all, so none outlives the bus (and its event loop),
        # not even one whose reader was being opened as its stream was cancelled.
        self._consumers: set[Any] = set()
        self._stopping: dict[Any, asyncio.Task[None]] = {}
        self._starting: dict[Any, asyncio.Task[None]] = {}
        self._closed = False

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            **self._options,
            acks="all",
            enable_idempotence=self._settings.enable_idempotence,
            linger_ms=_LINGER_MS,
            max_batch_size=_MAX_BATCH_BYTES,
            # The producer refuses larger records itself; publish() checks first.
            max_request_size=self._settings.max_record_bytes,
        )
        admin = AIOKafkaAdminClient(**self._options)
        self._producer, self._admin = producer, admin
        try:
            await admin.start()
            await producer.start()
        except (KafkaError, OSError) as exc:
            self._metrics.kafka_errors.labels("connect").inc()
            await self.close()
            raise Unavailable(f"cannot connect to Kafka at {self._bootstrap}: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        for reader in list(self._readers):
            reader.discard()
        for consumer in list(self._consumers):
            self._stop_consumer(consumer)
        if self._stopping:
            await asyncio.wait(list(self._stopping.values()))
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        if producer is not None:
            await producer.stop()  # flushes whatever is still in flight
        if admin is not None:
            await admin.close()

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        wanted = {self.kafka_topic(t): t for t in set(topics)}
        await self._refresh()
        missing = [name for name, topic in wanted.items() if topic not in self._partitions]
        if not missing:
            return
        new = [
            NewTopic(
                name,
                self._settings.partitions,
                self._settings.replication_factor,
                topic_configs=self.topic_configs(wanted[name]),
            )
            for name in missing
        ]
        try:
            response = await self._started(self._admin).create_topics(new)
        except KafkaError as exc:
            raise self._failure("creating topics", exc) from exc
        for error in response.topic_errors:
            name, code = error[0], error[1]
            cls = for_code(code) if code else None
            if cls is None or cls is TopicAlreadyExistsError:
                continue
            detail = error[2] if len(error) > 2 and error[2] else cls.__name__
            text = f"cannot create topic {name}: {detail}"
            raise InvalidArgument(text) if issubclass(cls, _CONFIG_ERRORS) else Unavailable(text)
        await self._wait_visible([wanted[name] for name in missing])

    def topic_configs(self, topic: str) -> dict[str, str]:
        """The configs a topic is created with. Object topics are compacted
        (``kafka.compact_topics``): an erasure's tombstone then removes every record of
        the erased copy, and keeps only the latest record of every other copy; the
        tombstones themselves (the erasure notices of partners' own consumers) stay
        ``kafka.delete_retention_ms``. The audit mirror keeps the delete policy (its
        records hold no content, and each one is an entry, not a version of a key)."""
        if topic in _DELETE_POLICY_TOPICS or not self._settings.compact_topics:
            return {}
        return {
            "cleanup.policy": "compact",
            "delete.retention.ms": str(self._settings.delete_retention_ms),
        }

    async def partitions(self, topic: str) -> list[int]:
        return list(await self._known(topic))

    async def publish(self, records: Sequence[BusRecord]) -> list[Placed | Refused]:
        if not records:
            return []
        names = {topic: self.kafka_topic(topic) for topic in {r.topic for r in records}}
        for topic in names:
            await self._known(topic)
        producer = self._started(self._producer)
        limit = self._settings.max_record_bytes
        # Per record: the future of its acknowledgement, or why it was refused at once.
        pending: list[asyncio.Future[Any] | Refused] = []
        try:
            # Queue everything first so the records share batches, then wait for all acks.
            for r in records:
                if (size := record_bytes(r)) > limit:
                    pending.append(_too_large(f"{size:,} bytes, over kafka.max_record_bytes"))
                    continue
                try:
                    fut = await producer.send(
                        names[r.topic],
                        None if r.tombstone else r.value,
                        r.key,
                        headers=list(r.headers),
                    )
                except _SIZE_ERRORS as exc:
                    pending.append(_too_large(str(exc)))
                    continue
                pending.append(fut)
        except KafkaError as exc:
            await asyncio.gather(*_futures(pending), return_exceptions=True)
            raise self._failure("publishing", exc) from exc
        await asyncio.gather(*_futures(pending), return_exceptions=True)
        placed: list[Placed | Refused] = []
        for r, outcome in zip(records, pending, strict=True):
            if isinstance(outcome, Refused):
                placed.append(outcome)
                continue
            failed = outcome.exception()
            if isinstance(failed, _SIZE_ERRORS):
                # The broker's own limit (message.max.bytes, the topic's max.message.bytes).
                placed.append(_too_large(f"the broker refused it: {failed}"))
            elif failed is not None:
                raise self._failure("publishing", failed) from failed
            else:
                result = outcome.result()
                placed.append(((r.topic, result.partition), result.offset))
        return placed

    async def ping(self) -> None:
        """One metadata round trip to a broker; Unavailable if it fails or takes
        longer than ``_PING_TIMEOUT_S``. It names one topic, the exchange's own
        ``clear`` (created at start): an empty list asks some brokers (Tansu) for every
        topic, which grows with the partners, and every second."""
        admin = self._started(self._admin)
        try:
            async with asyncio.timeout(_PING_TIMEOUT_S):
                await admin.describe_topics([self._prefix + _PING_TOPIC])
        except TimeoutError as exc:
            self._metrics.kafka_errors.labels("metadata").inc()
            raise Unavailable(
                f"Kafka at {self._bootstrap} did not answer a metadata request within"
                f" {_PING_TIMEOUT_S:.0f} s"
            ) from exc
        except (KafkaError, OSError) as exc:
            raise self._failure("reading metadata", exc) from exc

    async def open_reader(
        self, start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
    ) -> KafkaReader:
        if not start:
            raise InvalidArgument("a bus reader needs at least one topic-partition")
        for topic, partition in start:
            if partition not in await self._known(topic):
                raise NotFound(f"topic {topic!r} has no partition {partition}")
        fetch: dict[str, int] = {}
        if prefetch_bytes is not None:
            # A consumer holds a fetch response per broker ahead of getmany(), of up to
            # fetch_max_bytes (aiokafka's default: 50 MB). Kafka applies it to the whole
            # response, Tansu to each partition (measured): split it over the partitions
            # to bound both. Either returns a larger first record batch whole, and the
            # partition limit must take the largest record: a broker that cut a record
            # there would make aiokafka skip it (RecordTooLargeError).
            share = max(prefetch_bytes // len(start), _MIN_FETCH_BYTES)
            fetch = {
                "fetch_max_bytes": share,
                "max_partition_fetch_bytes": max(
                    share, self._settings.max_record_bytes + _RECORD_BATCH_ROOM
                ),
            }
        if self._closed:
            raise Unavailable("the Kafka bus is closed")
        consumer = AIOKafkaConsumer(
            **self._options,
            **fetch,
            group_id=None,  # manual assignment: a group join would cost ~5 s per reader
            enable_auto_commit=False,
            fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
            # Only reached when a start offset is out of range: below the log start
            # (retention removed it) this reads what is left; above the end the
            # reader's own next-offset guard drops the records it must not see again.
            auto_offset_reset="earliest",
        )
        self._consumers.add(consumer)
        tps = {KafkaTp(self.kafka_topic(t), p): off for (t, p), off in start.items()}
        # aiokafka's start() interrupted part-way can leave a connection of its own
        # open that stop() does not know: it runs to its end in a task of its own, and
        # a caller cancelled meanwhile has the consumer stopped after it.
        starting = asyncio.get_running_loop().create_task(_started_at(consumer, tps))
        starting.add_done_callback(retrieve_failure)
        self._starting[consumer] = starting
        try:
            await asyncio.shield(starting)
            if self._closed:
                raise Unavailable("the Kafka bus was closed while a reader was opened")
        except BaseException as exc:
            # Failed, or cancelled (the stream went away): the consumer must not outlive
            # this call, its connections would stay open with no one to close them.
            await asyncio.shield(self._stop_consumer(consumer))
            if isinstance(exc, KafkaError | OSError):
                raise self._failure("opening a reader", exc) from exc
            raise
        finally:
            self._starting.pop(consumer, None)
        reader = KafkaReader(self, consumer, {tp: off or 0 for tp, off in tps.items()})
        self._readers.add(reader)
        return reader

    def _stop_consumer(self, consumer: Any) -> asyncio.Task[None]:
        """Stop ``consumer`` once, in a task of its own that close() waits for: a
        cancelled caller cannot leave the stop half done."""
        task = self._stopping.get(consumer)
        if task is not None:
            return task
        task = asyncio.get_running_loop().create_task(
            _stopped_after(consumer, self._starting.get(consumer))
        )
        self._stopping[consumer] = task

        def done(_: asyncio.Task[None]) -> None:
            del self._stopping[consumer]
            self._consumers.discard(consumer)

        task.add_done_callback(done)
        return task

    # -- names -----------------------------------------------------------------------

    def kafka_topic(self, topic: str) -> str:
        """The broker's name for a logical topic."""
        check_topic_name(topic)
        name = self._prefix + topic
        if len(name) > _MAX_TOPIC_LENGTH:
            raise InvalidArgument(f"topic name {name!r} is longer than {_MAX_TOPIC_LENGTH}")
        return name

    def logical_topic(self, kafka_topic: str) -> str:
        return kafka_topic.removeprefix(self._prefix)

    # -- metadata --------------------------------------------------------------------

    async def _known(self, topic: str) -> list[int]:
        self.kafka_topic(topic)  # validates the name
        if topic not in self._partitions:
            await self._refresh()
        try:
            return self._partitions[topic]
        except KeyError:
            raise NotFound(f"unknown topic {topic!r}: call ensure_topics first") from None

    async def _refresh(self) -> None:
        """Reload the partitions of every topic under our prefix from a full listing."""
        try:
            listing = await self._started(self._admin).describe_topics(None)
        except KafkaError as exc:
            raise self._failure("reading metadata", exc) from exc
        found: dict[str, list[int]] = {}
        for t in listing:
            name = t["topic"]
            parts = t["partitions"]
            # A topic being created may be listed before its partitions have leaders.
            ready = parts and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts)
            if name.startswith(self._prefix) and t["error_code"] == 0 and ready:
                found[self.logical_topic(name)] = sorted(p["partition"] for p in parts)
        self._partitions = found

    async def _wait_visible(self, topics: list[str]) -> None:
        deadline = time.monotonic() + _TOPIC_READY_TIMEOUT_S
        while True:
            await self._refresh()
            missing = [t for t in topics if t not in self._partitions]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"Kafka at {self._bootstrap} accepted topics {missing} but they did not "
                    f"appear in metadata within {_TOPIC_READY_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(0.05)

    # -- helpers ---------------------------------------------------------------------

    def _started(self, client: Any) -> Any:
        if client is None:
            raise Unavailable("the Kafka bus is not started (or already closed)")
        return client

    def _failure(self, what: str, exc: BaseException) -> ExchangeError:
        self._metrics.kafka_errors.labels(_OPERATIONS.get(what, "metadata")).inc()
        if isinstance(exc, _SIZE_ERRORS):
            return InvalidArgument(f"{what}: a record is too large for Kafka ({exc})")
        if isinstance(exc, ExchangeError):
            return exc
        return Unavailable(f"Kafka at {self._bootstrap}: {what} failed: {exc!r}")

    def _forget(self, reader: KafkaReader) -> None:
        self._readers.discard(reader)


async def _started_at(consumer: Any, positions: Mapping[Any, int | None]) -> None:
    """Start ``consumer`` and place it at ``positions`` (None: the beginning)."""
    await consumer.start()
    consumer.assign(list(positions))
    for tp, offset in positions.items():
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)


async def _stopped_after(consumer: Any, starting: asyncio.Task[None] | None) -> None:
    if starting is not None:
        await asyncio.wait([starting])
    await consumer.stop()


def _too_large(detail: str) -> Refused:
    return Refused(f"record too large for Kafka ({detail})")


def _futures(pending: Sequence[asyncio.Future[Any] | Refused]) -> list[asyncio.Future[Any]]:
    return [p for p in pending if not isinstance(p, Refused)]


class KafkaReader:
    """One manually assigned consumer. One ``read()`` at a time."""

    def __init__(self, bus: KafkaBus, consumer: Any, positions: dict[Any, int]) -> None:
        self._bus = bus
        self._consumer = consumer
        # aiokafka TopicPartition -> next offset this reader may return. Anything
        # below it was returned already (or is before the start): Tansu can replay it.
        self._next = positions
        # Records taken from the consumer but past a read's max_bytes: the next read's.
        self._pending: deque[ReadRecord] = deque()
        self._closed = False

    async def read(
        self, max_records: int, timeout_s: float, max_bytes: int | None = None
    ) -> list[ReadRecord]:
        if max_records <= 0 or (max_bytes is not None and max_bytes <= 0):
            raise ValueError("max_records and max_bytes must be positive")
        if self._closed:
            raise Unavailable("this bus reader is closed")
        if not self._pending:
            self._pending.extend(await self._poll(max_records, timeout_s))
        out: list[ReadRecord] = []
        budget = max_bytes
        pending = self._pending
        while pending and len(out) < max_records:
            if budget is not None:
                size = record_bytes(pending[0])
                if out and size > budget:
                    break
                budget -= size
            out.append(pending.popleft())
        return out

    async def _poll(self, max_records: int, timeout_s: float) -> list[ReadRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining_ms = max(0, round((deadline - loop.time()) * 1000))
            try:
                batches = await self._consumer.getmany(
                    timeout_ms=remaining_ms, max_records=max_records
                )
            except KafkaError as exc:
                raise self._bus._failure("reading", exc) from exc
            records = self._accept(batches)
            # A batch of only replayed records does not end the wait early.
            if records or remaining_ms == 0:
                return records

    async def close(self) -> None:
        if not self._closed:
            self.discard()
            await asyncio.shield(self._bus._stop_consumer(self._consumer))

    def discard(self) -> None:
        """Refuse further reads; the bus stops the consumer."""
        self._closed = True
        self._bus._forget(self)
        self._pending.clear()

    def _accept(self, batches: Mapping[Any, Sequence[Any]]) -> list[ReadRecord]:
        out: list[ReadRecord] = []
        for tp, messages in batches.items():
            expected = self._next[tp]
            topic = self._bus.logical_topic(tp.topic)
            for m in messages:
                if m.offset < expected:
                    log.debug("dropping replayed record %s@%d < %d", tp, m.offset, expected)
                    continue
                expected = m.offset + 1
                # aiokafka hands a tuple of (name, value) pairs: kept as it is unless a
                # value is null (never in the exchange's records), read as b"".
                headers = m.headers or ()
                if None in map(_VALUE, headers):
                    headers = tuple((k, b"" if v is None else v) for k, v in headers)
                out.append(
                    ReadRecord(topic, tp.partition, m.offset, m.key or b"", m.value or b"", headers)
                )
            self._next[tp] = expected
        return out

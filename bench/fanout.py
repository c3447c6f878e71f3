"""Fan-out benchmark: many subscribers, how soon they see new objects, at what cost.

Prints numbers for the embedded local bus and for Kafka (a Tansu broker this script
starts and stops itself); it never asserts on a timing. Sections (``--only``):

live      100 Subscribe streams at 1,000 objects/s, and 1,000 streams at 100 objects/s
          (bundles of 10, open loop, from a submitting process of its own; the audit log
          records every delivery as always). Per delivery: submit-to-receipt time, and
          every stream checked for lost and repeated objects; submit-to-answer per
          bundle; deliveries/s, and deliveries per second of server CPU.
baseline  a bare grpc.aio server (its own event loop in a thread of this process, as the
          exchange runs here) streaming pre-encoded messages of the size the exchange's
          SubscribeResponse messages had in this run's live section (or a built one of
          10 deliveries) to as many streams, read by the same subscriber processes, as
          fast as they go: messages and deliveries per second of server CPU.
idle      1,000 idle Subscribe streams on a server holding many stored objects (1,000,000
          in the full run, submitted through the SDK in bundles of 1,000): server RSS
          and idle CPU.
catchup   one SDK subscriber (``ExchangeClient.subscribe(from_beginning=True)``) reading
          every stored object; then, on a smaller store, one raw stream and 100 at once
          reading from the beginning: their total time against one's.

Subscribers are raw grpc.aio streams in 1 or 2 spawned processes (one channel, and
one partner, per stream): each message's object ids are found by a scan of its bytes
(field 2 of each Delivery, checked against a protobuf decode of each stream's first
message), nothing else of it is decoded. The exchange runs in this process
(``tests.helpers.ServerThread``, ``validation_workers=0``), a fresh one per
measurement, except for idle and the SDK catch-up: there in a process of its own, so
that its RSS is its own. Run ``python bench/fanout.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import grpc
import orjson
from exchange_client import ExchangeClient
from exchange_protocol.pb import exchange_pb2 as pb

# bench/ and tests/ are not installed packages: make the repository root importable.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    LATENCY_SENDERS,
    BusSetup,
    CpuMeter,
    CpuUse,
    _expect,
    _id_prefixes,
    _ms,
    _recv,
    _send_fixed_rate,
    _stop_soon,
    background_load,
    child_process,
    cpu_model,
    percentile,
    table,
    tansu_broker,
    tansu_version,
    versions,
)
from exchange._memory import collect_less_often  # noqa: E402
from exchange._subscription_request import Cursor  # noqa: E402
from tests.helpers import ServerThread, bundle, indicator, settings_for  # noqa: E402

P = ParamSpec("P")
T = TypeVar("T")

SUBSCRIBE_METHOD = f"/{pb.DESCRIPTOR.services_by_name['ExchangeService'].full_name}/Subscribe"
BARE_STREAM_SERVICE = "bench.BareStream"
BARE_STREAM_METHOD = f"/{BARE_STREAM_SERVICE}/Stream"
# Streams allowed open in the server for the bench (more than the 1,000 of the default).
MAX_OPEN = 2_000
OPEN_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 300.0
# Streams each subscribing process opens at once (the next ones once these are open):
# partners do not all connect in the same millisecond, and of 1,000 calls at once on
# Kafka some ended CANCELLED after 30 s, never taken up by the busy server (as gRPC's
# grpc.server_max_unrequested_time_in_server, 30 s by default, would do).
OPEN_WAVE = 50
# The issue "Fan-out at scale".
TARGET_DELIVERY_P99_MS = 25.0  # 100 subscribers at 1,000 objects/s, embedded bus
TARGET_DELIVERY_P99_KAFKA_MS = 50.0
TARGET_ANSWER_P99_MS = 50.0
TARGET_WIDE_P99_MS = 100.0  # 1,000 subscribers at 100 objects/s
TARGET_IDLE_CPU = 0.05  # of one core
TARGET_RSS_MB = 500.0
TARGET_CATCHUP_RATE = 50_000.0  # objects/s, one SDK subscriber
TARGET_CATCHUP_RATIO = 10.0  # 100 at once against one, total time

# -- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveCase:
    """``subscribers`` streams; bundles of ``bundle_size`` objects, one every ``interval_s``."""

    name: str  # "fast": 100 streams at 1,000 objects/s; "wide": 1,000 at 100/s
    subscribers: int
    bundle_size: int
    interval_s: float

    @property
    def rate(self) -> float:
        return self.bundle_size / self.interval_s


FAST = LiveCase("fast", 100, 10, 0.010)
LIVE_NAMES = ("fast", "wide")


@dataclass(frozen=True)
class Plan:
    live: tuple[LiveCase, ...]
    live_seconds: float
    drain_s: float  # how long subscribers may take after the last submit
    stored: int  # objects stored for idle and the SDK catch-up
    idle_subscribers: int
    idle_seconds: float
    catchup_objects: int  # the store that one and 100 raw streams read
    catchup_subscribers: int
    baseline_messages: int  # messages the bare server streams, over all streams


FULL = Plan(
    live=(FAST, LiveCase("wide", 1_000, 10, 0.100)),
    live_seconds=10.0,
    drain_s=30.0,
    stored=1_000_000,
    idle_subscribers=1_000,
    idle_seconds=10.0,
    catchup_objects=10_000,
    catchup_subscribers=100,
    baseline_messages=50_000,
)
# Fewer streams in the wide and idle cases: on Kafka the exchange opens only some 5 to
# 20 streams a second (each partner's topic is created in the broker).
QUICK = Plan(
    live=(FAST, LiveCase("wide", 250, 10, 0.100)),
    live_seconds=3.0,
    drain_s=20.0,
    stored=20_000,
    idle_subscribers=250,
    idle_seconds=5.0,
    catchup_objects=2_000,
    catchup_subscribers=100,
    baseline_messages=15_000,
)
STORE_BUNDLE = 1_000


# -- CPU by role -------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds used, command name) of every process (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 1 :].split()
        found[int(stat.parent.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / tick,
            name,
        )
    return found


def _roles(
    table: Mapping[int, tuple[int, float, str]], named: Mapping[str, Collection[int]]
) -> dict[int, str]:
    """Every process of this tree with its role: a named one (with its children), Tansu
    (``kafka``), or the rest: ``server`` (the server runs in this process; the rest are
    its validation workers), ``bench`` when a process was named ``server``."""
    me = os.getpid()
    of = {pid: role for role, pids in named.items() for pid in pids}
    rest = "bench" if "server" in named else "server"
    roles: dict[int, str] = {}
    for pid in table:
        at, tansu = pid, False
        while at in table and at not in of and at != me and at > 1:
            tansu = tansu or table[at][2].startswith("tansu")
            at = table[at][0]
        if at in of:
            roles[pid] = of[at]
        elif at == me:
            roles[pid] = "kafka" if tansu else rest
    return roles


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


@dataclass(frozen=True)
class Cores:
    """Average cores busy during a measurement, by role; and this run's and the machine's."""

    seconds: float
    by_role: Mapping[str, float]
    use: CpuUse

    def __getitem__(self, role: str) -> float:
        return self.by_role.get(role, 0.0)

    def cpu_s(self, role: str) -> float:
        return self[role] * self.seconds


class RoleMeter:
    """CPU by role (``named`` pids; ``server`` for the rest of this process tree) from
    construction to ``stop()``."""

    def __init__(self, named: Mapping[str, Collection[int]]) -> None:
        self._named = named
        self._meter = CpuMeter()
        self._start = _processes()
        self._wall = time.perf_counter()

    def stop(self) -> Cores:
        wall = time.perf_counter() - self._wall
        end = _processes()
        use = self._meter.stop()
        used: dict[str, float] = {}
        for pid, role in _roles(end, self._named).items():
            before = self._start.get(pid)
            start_s = before[1] if before is not None and before[0] == end[pid][0] else 0.0
            used[role] = used.get(role, 0.0) + end[pid][1] - start_s
        # "ours": every process of this run's tree (CpuMeter counts only direct children).
        ours = CpuUse(sum(used.values()) / wall, use.machine)
        return Cores(wall, {role: s / wall for role, s in used.items()}, ours)


# -- the server ----------------------------------------------------------------------------


@contextlib.contextmanager
def fanout_server(bus: BusSetup) -> Iterator[ServerThread]:
    """A fresh ExchangeServer (new data directory and topic prefix) on its own thread,
    as bench/ingest.py runs it, allowing MAX_OPEN streams."""
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        settings = settings_for(
            Path(tmp), bus.bootstrap, validation_workers=0, subscriptions={"max_open": MAX_OPEN}
        )
        server = ServerThread(settings)
        try:
            server.start()
            collect_less_often()  # as `exchange serve` does once started
            yield server
        except BaseException:
            _stop_soon(server)
            raise
        _stop(server)


def _stop(server: ServerThread) -> None:
    """Stop gracefully, waiting up to STOP_TIMEOUT_S (after 100 streams caught up on
    Kafka, stopping took over a minute); past it, just stop the loop and the thread."""
    started = time.perf_counter()
    if server.server is not None:
        try:
            server.run(server.server.stop(grace_s=1.0), STOP_TIMEOUT_S)
        except Exception as exc:
            progress(f"  stopping the server failed after {STOP_TIMEOUT_S:g} s: {exc!r}")
        server.server = None  # ServerThread.stop() then only stops the loop and thread
    server.stop()
    if (took := time.perf_counter() - started) > 10:
        progress(f"  stopping the server took {took:.0f} s")


def _counter(server: ServerThread, path: str) -> int | None:
    """A count the server keeps (``recorder.recorded``...), None if it has no such thing."""
    found: Any = server.server
    for name in path.split("."):
        found = getattr(found, name, None)
    return found if isinstance(found, int) else None


def _tokens(server: ServerThread, count: int, name: str) -> tuple[list[str], float]:
    """``count`` partners of their own; their tokens, and how long registering took."""
    started = time.perf_counter()
    tokens = [server.add_partner(f"{name}-{i}").token for i in range(count)]
    return tokens, time.perf_counter() - started


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


# -- the subscribing processes: raw grpc.aio streams -------------------------------------
#
# Each stream is a channel (and TCP connection) of its own. A message's object ids are
# found by scanning its bytes for field 2 (object_id) of a Delivery holding one of this
# run's ids: measured objects (…-8000-<seq>) or probes (…-9000-<n>); a JSON body cannot
# hold the tag byte 0x12. The first message with deliveries of each stream is decoded
# with protobuf too, and the counts must agree.


def _id_scan(tag: str) -> re.Pattern[bytes]:
    measured, _ = _id_prefixes(tag)
    stem = measured.removesuffix("8000-").encode()
    return re.compile(
        b"\x12" + bytes([len(measured) + 12]) + re.escape(stem) + rb"([89])000-([0-9a-f]{12})"
    )


@dataclass
class _Stream:
    seqs: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    count: int = 0  # measured deliveries
    probes: int = 0
    messages: int = 0  # with deliveries
    data_bytes: int = 0
    empty: int = 0  # messages without deliveries: the start cursor, heartbeats
    opened: bool = False  # has had its first message (or failed)
    live: bool = False  # has had a probe (or failed)
    drained: bool = False  # has had the expected count (or failed)
    ended: bool = False  # the call is over
    checked: bool = False
    last: float = math.nan  # time of the last measured delivery
    error: str = ""  # why the call ended early, if it did


def _why(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)


class _Board:
    """Every stream of the process, and events when each has had its first message / a
    probe / the expected count / its end. A stream that fails counts as all of these
    (what it did not receive shows as lost), with its error kept."""

    def __init__(self, streams: int, tag: str, keep: bool) -> None:
        self.scan = _id_scan(tag)
        self.keep = keep
        self.streams = [_Stream() for _ in range(streams)]
        self.expected = math.inf
        self.events = {k: asyncio.Event() for k in ("opened", "live", "drained", "ended")}
        self._targets = dict.fromkeys(self.events, streams)
        self._done = dict.fromkeys(self.events, 0)

    async def opening(self, count: int) -> None:
        """Until ``count`` streams had their first message (or failed)."""
        self._targets["opened"] = count
        self.events["opened"].clear()
        if self._done["opened"] < count:
            await self.events["opened"].wait()

    def _mark(self, s: _Stream, kind: str) -> None:
        if not getattr(s, kind):
            setattr(s, kind, True)
            self._done[kind] += 1
            if self._done[kind] >= self._targets[kind]:
                self.events[kind].set()

    def expect(self, count: int) -> None:
        self.expected = count
        for s in self.streams:
            if s.count >= count:
                self._mark(s, "drained")

    def message(self, i: int, raw: bytes, now: float) -> None:
        s = self.streams[i]
        self._mark(s, "opened")
        found = self.scan.findall(raw)
        if not found:
            s.empty += 1
            return
        if not s.checked:
            s.checked = True
            decoded = len(pb.SubscribeResponse.FromString(raw).deliveries)
            if decoded != len(found):
                raise RuntimeError(f"the id scan found {len(found)} of {decoded} deliveries")
        s.messages += 1
        s.data_bytes += len(raw)
        before = s.count
        for kind, seq in found:
            if kind == b"8":
                s.count += 1
                if self.keep:
                    s.seqs.append(int(seq, 16))
                    s.times.append(now)
            else:
                s.probes += 1
        if s.count > before:
            s.last = now
            if s.count >= self.expected:
                self._mark(s, "drained")
        if s.probes:
            self._mark(s, "live")

    def ended(self, i: int, error: str = "") -> None:
        s = self.streams[i]
        s.error = error
        if error:
            for kind in ("opened", "live", "drained"):
                self._mark(s, kind)
        self._mark(s, "ended")


async def _read(board: _Board, i: int, call: Any) -> None:
    try:
        async for raw in call:
            board.message(i, raw, time.time())
    except Exception as exc:
        board.ended(i, _why(exc))
        return
    board.ended(i)


@dataclass(frozen=True)
class _StreamsReport:
    """What one subscribing process received (``streams``: seqs and receipt times of
    the measured objects, per stream, when kept)."""

    pid: int
    start: float  # just before the calls were made
    streams: list[tuple[array[int], array[float]]]
    counts: list[int]
    last: list[float]
    messages: int
    data_bytes: int
    deliveries: int  # measured and probes, in messages with deliveries
    empty: int
    errors: list[str]  # per stream: why it ended early ("": it did not)


@dataclass(frozen=True)
class _SubscriberJob:
    """The streams of one subscribing process: a request and a token (None: none) each."""

    target: str
    method: str
    requests: list[bytes]
    tokens: list[str | None]
    tag: str
    keep: bool  # keep each measured delivery's seq and receipt time
    wave: int | None  # streams opened at once (the next wave once they are open); None: all


async def _open_streams(
    board: _Board, job: _SubscriberJob, channels: list[grpc.aio.Channel], tasks: list[Any]
) -> None:
    """Start the calls, ``job.wave`` at a time, each wave open before the next."""
    calls = list(zip(channels, job.requests, job.tokens, strict=True))
    wave = job.wave or len(calls)
    for first in range(0, len(calls), wave):
        for i in range(first, min(first + wave, len(calls))):
            channel, request, token = calls[i]
            stream = channel.unary_stream(
                job.method, request_serializer=None, response_deserializer=None
            )
            metadata = (("authorization", f"Bearer {token}"),) if token else None
            tasks.append(asyncio.create_task(_read(board, i, stream(request, metadata=metadata))))
        await board.opening(len(tasks))


async def _subscribe(conn: Connection, job: _SubscriberJob) -> None:
    board = _Board(len(job.requests), job.tag, job.keep)
    keep = job.keep
    conn.send(("ready", os.getpid()))
    await _recv(conn)  # "open"
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in job.requests]
    start = time.time()
    tasks: list[Any] = []
    try:
        await asyncio.wait_for(_open_streams(board, job, channels, tasks), OPEN_TIMEOUT_S)
        conn.send(("open", time.time() - start))
        while True:
            what, count, timeout_s = await _recv(conn)
            if what == "peek":
                conn.send(("peek", sum(s.messages + s.empty for s in board.streams)))
                continue
            if what == "now":
                break
            if what == "drained":
                board.expect(count)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(board.events[what].wait(), timeout_s)
            if what == "live":
                conn.send(("live", None))
            else:
                break
        streams = board.streams
        conn.send(
            (
                "done",
                _StreamsReport(
                    pid=os.getpid(),
                    start=start,
                    streams=[(s.seqs, s.times) for s in streams] if keep else [],
                    counts=[s.count for s in streams],
                    last=[s.last for s in streams],
                    messages=sum(s.messages for s in streams),
                    data_bytes=sum(s.data_bytes for s in streams),
                    deliveries=sum(s.count + s.probes for s in streams),
                    empty=sum(s.empty for s in streams),
                    errors=[s.error for s in streams],
                ),
            )
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close(grace=None)


def _subscriber_process(conn: Connection, job: _SubscriberJob) -> None:
    """Entry point of a subscribing process: says ("ready", pid), opens its streams on
    "open" and says ("open", seconds) once each had its first message; then answers
    ("wait", what, count, timeout) commands: "live" (each stream saw a probe), "drained"
    (each has ``count`` measured objects), "ended" (every call is over), "now"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    try:
        asyncio.run(_subscribe(conn, job))
    except Exception as exc:
        conn.send(("error", repr(exc)))


class Subscribers:
    """Raw-stream subscribers spread over ``processes`` spawned processes."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        target: str,
        requests: Sequence[bytes],
        tokens: Sequence[str | None],
        tag: str,
        *,
        processes: int,
        method: str = SUBSCRIBE_METHOD,
        keep: bool = True,
        wave: int | None = OPEN_WAVE,
    ) -> None:
        work = list(zip(requests, tokens, strict=True))
        self.conns = [
            stack.enter_context(
                child_process(
                    _subscriber_process,
                    _SubscriberJob(
                        target,
                        method,
                        [r for r, _ in share],
                        [t for _, t in share],
                        tag,
                        keep,
                        wave,
                    ),
                )
            )
            for share in _split(work, processes)
        ]
        self.pids = [_expect(c, "ready", 120) for c in self.conns]
        self.open_s = math.nan

    def open(self) -> float:
        """Open every stream; seconds until each had its first message."""
        started = time.perf_counter()
        for conn in self.conns:
            conn.send("open")
        for conn in self.conns:
            _expect(conn, "open", OPEN_TIMEOUT_S + 30)
        self.open_s = time.perf_counter() - started
        return self.open_s

    def messages(self) -> int:
        """Messages the streams have received so far, in all."""
        for conn in self.conns:
            conn.send(("peek", 0, 0))
        return sum(_expect(conn, "peek", 60) for conn in self.conns)

    def wait(self, what: str, count: int, timeout_s: float) -> list[_StreamsReport]:
        for conn in self.conns:
            conn.send((what, count, timeout_s))
        return [_expect(conn, "done", timeout_s + 60) for conn in self.conns]


def subscribe_request(from_beginning: bool = False) -> bytes:
    return pb.SubscribeRequest(from_beginning=from_beginning).SerializeToString()


# -- the submitting process ----------------------------------------------------------------


def _measured_bundle(identity: str, tag: str, first: int, size: int) -> dict[str, Any]:
    measured, _ = _id_prefixes(tag)
    return bundle(
        indicator(identity, n=n, object_id=f"{measured}{n:012x}")
        for n in range(first, first + size)
    )


def _probe_bundle(identity: str, tag: str, n: int) -> dict[str, Any]:
    _, probe = _id_prefixes(tag)
    return bundle([indicator(identity, n=n, object_id=f"{probe}{n:012x}")])


@dataclass(frozen=True)
class _Client:
    """Whom a client process acts for, and this run's id tag."""

    target: str
    token: str
    identity: str
    tag: str


def _sender_process(conn: Connection, who: _Client, case: LiveCase, count: int) -> None:
    """Entry point of the submitting process: ``count`` bundles at the case's rate (open
    loop, bench/ingest.py's senders), after probes on request ("probe" -> "probed")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        size, identity, tag = case.bundle_size, who.identity, who.tag
        work = [_measured_bundle(identity, tag, i * size, size) for i in range(count)]
        with ExchangeClient(who.target, who.token) as client:
            client.submit(_probe_bundle(identity, tag, 0))  # connects, warms up
            conn.send(("ready", os.getpid()))
            n = 1
            while conn.recv() == "probe":
                client.submit(_probe_bundle(identity, tag, n))
                n += 1
                conn.send(("probed", None))
            sent, answered = _send_fixed_rate(client, work, case.interval_s)
        conn.send(("done", (sent, answered)))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def _store_process(conn: Connection, who: _Client, count: int) -> None:
    """Entry point of the storing process: ``count`` measured objects in bundles of
    STORE_BUNDLE, one client, one at a time; reports ("done", (accepted, seconds))."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ready", os.getpid()))
        started = time.perf_counter()
        accepted = 0
        with ExchangeClient(who.target, who.token, timeout=600) as client:
            for first in range(0, count, STORE_BUNDLE):
                size = min(STORE_BUNDLE, count - first)
                raw = orjson.dumps(_measured_bundle(who.identity, who.tag, first, size))
                accepted += len(client.submit(raw).accepted)
                if (first // STORE_BUNDLE + 1) % 100 == 0:
                    rate = accepted / (time.perf_counter() - started)
                    progress(f"  stored {accepted:,} of {count:,} ({rate:,.0f}/s)")
        conn.send(("done", (accepted, time.perf_counter() - started)))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def _sdk_catchup_process(conn: Connection, who: _Client, expected: int, timeout_s: float) -> None:
    """Entry point of the SDK subscriber: ``subscribe(from_beginning=True)`` until all
    ``expected`` measured objects arrived; reports (start, end, distinct, repeated)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        measured, _ = _id_prefixes(who.tag)
        seen = bytearray(expected)
        distinct = repeated = 0
        conn.send(("ready", os.getpid()))
        conn.recv()  # "go"
        start = time.time()
        with ExchangeClient(who.target, who.token) as client:
            subscription = client.subscribe(from_beginning=True, timeout=timeout_s)
            error = ""
            try:
                for delivery in subscription:
                    oid = delivery.object_id
                    if not oid.startswith(measured):
                        continue
                    seq = int(oid[-12:], 16)
                    if seq < expected and not seen[seq]:
                        seen[seq] = 1
                        distinct += 1
                        if distinct == expected:
                            break
                    else:
                        repeated += 1
            except Exception as exc:  # the deadline, or the stream failed: counted as is
                error = f"{type(exc).__name__}: {exc}"
            end = time.time()
            subscription.close()
        conn.send(("done", (start, end, distinct, repeated, error)))
    except Exception as exc:
        conn.send(("error", repr(exc)))


# -- live ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """Streams that ended before they had everything, and the commonest reason."""

    streams: int = 0
    reason: str = ""


def _failed(reports: Sequence[_StreamsReport]) -> Failed:
    errors = Counter(e for r in reports for e in r.errors if e)
    return Failed(errors.total(), errors.most_common(1)[0][0] if errors else "")


@dataclass(frozen=True)
class LiveResult:
    bus: str
    case: LiveCase
    processes: int  # subscribing processes
    register_s: float
    open_s: float
    sent_rate: float
    submitted: int
    expected: int  # deliveries: submitted x streams
    received: int  # distinct, summed over the streams
    repeated: int
    ack_ms: Sequence[float]
    delivery_ms: Sequence[float]
    seconds: float  # first submit until the last stream had everything (or gave up)
    cores: Cores
    messages: int
    data_bytes: int
    deliveries: int
    audited: int | None  # audit entries recorded by the server during the measurement
    failed: Failed

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    @property
    def per_server_core(self) -> float:
        cpu = self.cores.cpu_s("server")
        return self.received / cpu if cpu > 0 else math.nan

    @property
    def message_bytes(self) -> float:
        return self.data_bytes / self.messages if self.messages else math.nan

    @property
    def per_message(self) -> float:
        return self.deliveries / self.messages if self.messages else math.nan


def _go_live(subs: Subscribers, sender: Connection, timeout_s: float = 120.0) -> None:
    """Probe objects until every stream has received one (the whole path is warm)."""
    for conn in subs.conns:
        conn.send(("live", 0, timeout_s))
    waiting = list(subs.conns)
    deadline = time.monotonic() + timeout_s
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the streams did not all receive a probe in {timeout_s:g} s")
        sender.send("probe")
        _expect(sender, "probed", 60)
        time.sleep(0.2)
        for conn in list(waiting):
            if conn.poll(0):
                _expect(conn, "live", 0)
                waiting.remove(conn)


def measure_live(
    bus: BusSetup, case: LiveCase, *, seconds: float, drain_s: float, processes: int
) -> LiveResult:
    tag = uuid.uuid4().hex[:8]
    count = max(1, round(seconds / case.interval_s))
    with fanout_server(bus) as server, contextlib.ExitStack() as stack:
        submitter = server.add_partner("bench-fanout-submitter")
        tokens, register_s = _tokens(server, case.subscribers, "bench-fanout-subscriber")
        subs = Subscribers(
            stack,
            server.target,
            [subscribe_request()] * len(tokens),
            tokens,
            tag,
            processes=processes,
        )
        sender = stack.enter_context(
            child_process(
                _sender_process,
                _Client(server.target, submitter.token, submitter.identity, tag),
                case,
                count,
            )
        )
        sender_pid = _expect(sender, "ready", 120)
        progress(
            f"  {case.subscribers:,} partners registered in {register_s:.1f} s; opening streams"
        )
        open_s = subs.open()
        _go_live(subs, sender)
        audited = _counter(server, "recorder.recorded")
        meter = RoleMeter({"subscribers": subs.pids, "submitter": [sender_pid]})
        sender.send("go")
        sent, answered = _expect(sender, "done", seconds * 3 + 120)
        submitted = sum(case.bundle_size for t in sent if not math.isnan(t))
        reports = subs.wait("drained", submitted, drain_s)
        cores = meter.stop()
        after = _counter(server, "recorder.recorded")
    first = min((t for t in sent if not math.isnan(t)), default=math.nan)
    return _live_result(
        bus,
        case,
        processes=processes,
        setup=(register_s, open_s),
        sent=sent,
        answered=answered,
        reports=reports,
        cores=cores,
        first=first,
        audited=None if audited is None or after is None else after - audited,
    )


def _live_result(
    bus: BusSetup,
    case: LiveCase,
    *,
    processes: int,
    setup: tuple[float, float],
    sent: Sequence[float],
    answered: Sequence[float],
    reports: Sequence[_StreamsReport],
    cores: Cores,
    first: float,
    audited: int | None,
) -> LiveResult:
    size = case.bundle_size
    expected_seqs = {
        i * size + k for i, t in enumerate(sent) if not math.isnan(t) for k in range(size)
    }
    delivery_ms: list[float] = []
    received = repeated = 0
    last = first
    for report in reports:
        for seqs, times in report.streams:
            seen: set[int] = set()
            for seq, at in zip(seqs, times, strict=True):
                if seq in seen or seq not in expected_seqs:
                    repeated += 1
                    continue
                seen.add(seq)
                delivery_ms.append((at - sent[seq // size]) * 1000)
                last = max(last, at)
            received += len(seen)
    sent_at = sorted(t for t in sent if not math.isnan(t))
    span = sent_at[-1] - sent_at[0] if len(sent_at) > 1 else math.nan
    return LiveResult(
        bus=bus.name,
        case=case,
        processes=processes,
        register_s=setup[0],
        open_s=setup[1],
        sent_rate=(len(sent_at) - 1) * size / span if span > 0 else math.nan,
        submitted=len(expected_seqs),
        expected=len(expected_seqs) * case.subscribers,
        received=received,
        repeated=repeated,
        ack_ms=[(a - s) * 1000 for s, a in zip(sent, answered, strict=True) if not math.isnan(a)],
        delivery_ms=delivery_ms,
        seconds=max(last - first, 1e-9),
        cores=cores,
        messages=sum(r.messages for r in reports),
        data_bytes=sum(r.data_bytes for r in reports),
        deliveries=sum(r.deliveries for r in reports),
        audited=audited,
        failed=_failed(reports),
    )


# -- baseline: bare grpc.aio server streaming ----------------------------------------------


class BareStreamServer:
    """A grpc.aio server with one server-streaming method, on its own event loop in a
    thread of this process: each call writes an empty message (the stream is open),
    waits for ``go()``, then writes ``message`` as many times as the request says."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self._go: asyncio.Event | None = None
        self.port = 0

    def _run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _stream(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        assert self._go is not None
        await context.write(b"")
        await self._go.wait()
        message = self.message
        for _ in range(int(request)):
            await context.write(message)

    async def _start(self) -> int:
        self._go = asyncio.Event()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            BARE_STREAM_SERVICE, {"Stream": grpc.unary_stream_rpc_method_handler(self._stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return port

    def go(self) -> None:
        assert self._go is not None
        self.loop.call_soon_threadsafe(self._go.set)

    def __enter__(self) -> BareStreamServer:
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


def baseline_message(tag: str, deliveries: int, size: int | None = None) -> bytes:
    """A SubscribeResponse as the exchange fills it (``deliveries`` generated indicators,
    a cursor per delivery), its top-level cursor padded to ``size`` bytes when given."""
    measured, _ = _id_prefixes(tag)
    submitter = f"bench-fanout-submitter-{uuid.uuid4().hex[:6]}"
    identity = f"identity--{uuid.uuid4()}"
    topics = ["t0123456789.clear", "t0123456789.green", f"t0123456789.partner.{submitter}"]

    def cursor(n: int) -> str:
        return Cursor({(t, 0): (n + 1, n + 1) for t in topics}).encode()

    response = pb.SubscribeResponse(cursor=cursor(deliveries))
    for n in range(deliveries):
        obj = indicator(identity, n=n, object_id=f"{measured}{n:012x}")
        d = response.deliveries.add()
        d.object = orjson.dumps(obj)
        d.object_id = obj["id"]
        d.object_type = "indicator"
        d.version = obj["modified"]
        d.submitter = submitter
        d.submitter_identity = identity
        d.tlp = pb.TLP_GREEN
        d.accepted_at.FromNanoseconds(time.time_ns())
        d.cursor = cursor(n)
    raw = response.SerializeToString()
    for _ in range(3):  # the cursor's length prefix may grow by a byte
        if size is None or len(raw) >= size:
            break
        response.cursor += " " * (size - len(raw))
        raw = response.SerializeToString()
    return raw


@dataclass(frozen=True)
class BareResult:
    streams: int
    processes: int
    message_bytes: int
    per_message: int  # deliveries in each message
    messages: int  # received, over all streams
    seconds: float
    cores: Cores
    sized_from: str  # where the message size came from
    failed: Failed

    @property
    def message_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def delivery_rate(self) -> float:
        return self.message_rate * self.per_message

    @property
    def per_server_core(self) -> float:
        cpu = self.cores.cpu_s("server")
        return self.messages * self.per_message / cpu if cpu > 0 else math.nan


def measure_bare(
    streams: int,
    messages: int,
    *,
    per_message: int,
    size: int | None,
    processes: int,
    sized_from: str,
) -> BareResult:
    tag = uuid.uuid4().hex[:8]
    message = baseline_message(tag, per_message, size)
    each = max(1, messages // streams)
    with BareStreamServer(message) as bare, contextlib.ExitStack() as stack:
        subs = Subscribers(
            stack,
            bare.target,
            [str(each).encode()] * streams,
            [None] * streams,
            tag,
            processes=processes,
            method=BARE_STREAM_METHOD,
            keep=False,
        )
        subs.open()
        meter = RoleMeter({"subscribers": subs.pids})
        go = time.time()
        bare.go()
        reports = subs.wait("ended", 0, 300)
        cores = meter.stop()
    received = sum(r.messages for r in reports)
    last = max((t for r in reports for t in r.last if not math.isnan(t)), default=math.nan)
    return BareResult(
        streams,
        processes,
        len(message),
        per_message,
        received,
        last - go,
        cores,
        sized_from,
        _failed(reports),
    )


# -- idle and catch-up -----------------------------------------------------------------------


@dataclass(frozen=True)
class IdleResult:
    bus: str
    stored: int
    store_s: float
    subscribers: int
    open_s: float
    seconds: float
    cores: Cores
    rss_before_mb: float  # the server's process before the server started
    rss_mb: float  # the server's process during the idle window
    workers_rss_mb: float  # the validation workers
    heartbeats: int  # messages the idle streams received during the window, in all
    failed: Failed


@dataclass(frozen=True)
class CatchupResult:
    bus: str
    who: str  # "SDK", "raw"
    subscribers: int
    objects: int  # each subscriber reads
    seconds: float  # from before the first call until the last subscriber had everything
    received: int  # distinct, summed
    repeated: int
    cores: Cores
    failed: Failed

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else math.nan


class InProcess:
    """The server of this process, as the measurements below use it."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.pid = os.getpid()
        self.target = server.target

    def partner(self, name: str) -> tuple[str, str]:
        """A new partner: its token and STIX identity."""
        found = self.server.add_partner(name)
        return found.token, found.identity

    def tokens(self, count: int, name: str) -> tuple[list[str], float]:
        return _tokens(self.server, count, name)

    def published(self) -> int:
        assert self.server.server is not None
        return self.server.server.relay.published


def _server_process(conn: Connection, bus: BusSetup) -> None:
    """Entry point of a server process of its own: says ("ready", (pid, target, RSS
    before the server started)), then runs InProcess's methods on request ((name,
    args) -> ("done", result)) until ("stop", ())."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)  # clean up (the data directory) when stopped
    try:
        before = rss_mb(os.getpid())
        with fanout_server(bus) as server:
            local = InProcess(server)
            conn.send(("ready", (os.getpid(), server.target, before)))
            while (request := conn.recv())[0] != "stop":
                conn.send(("done", getattr(local, request[0])(*request[1])))
        conn.send(("stopped", None))
    except Exception as exc:
        conn.send(("error", repr(exc)))


class InChild:
    """A server in a process of its own (_server_process): what its RSS is is its own."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pid, self.target, self.rss_before = _expect(conn, "ready", 120)

    def _call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        return _expect(self.conn, "done", 600)

    def partner(self, name: str) -> tuple[str, str]:
        result: tuple[str, str] = self._call("partner", name)
        return result

    def tokens(self, count: int, name: str) -> tuple[list[str], float]:
        result: tuple[list[str], float] = self._call("tokens", count, name)
        return result

    def published(self) -> int:
        result: int = self._call("published")
        return result

    def stop(self) -> None:
        self.conn.send(("stop", ()))
        _expect(self.conn, "stopped", 120)


@contextlib.contextmanager
def server_process(bus: BusSetup) -> Iterator[InChild]:
    """A server in a spawned process of its own (not a daemon: its validation workers
    are its children), stopped by request, else by its pid (SIGTERM, then SIGKILL)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_server_process, args=(child, bus), daemon=False)
    process.start()
    try:
        server = InChild(parent)
        yield server
        server.stop()
        process.join(60)
    finally:
        if process.is_alive():
            process.terminate()  # its handler stops the server, removes its data
            process.join(60)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


Server = InProcess | InChild


def store_objects(server: Server, tag: str, count: int) -> tuple[int, float]:
    """Submit ``count`` measured objects through the SDK (bundles of STORE_BUNDLE) and
    wait until the relay published them; (accepted, seconds)."""
    token, identity = server.partner("bench-fanout-store")
    started = time.perf_counter()
    with child_process(_store_process, _Client(server.target, token, identity, tag), count) as conn:
        _expect(conn, "ready", 120)
        accepted, _ = _expect(conn, "done", 3600)
    deadline = time.monotonic() + 600
    while server.published() < accepted and time.monotonic() < deadline:
        time.sleep(0.05)
    return accepted, time.perf_counter() - started


def _server_rss(pid: int) -> tuple[float, float]:
    """RSS of the server's process, and of its children (the validation workers)."""
    table = _processes()
    children = [p for p, (parent, _, _) in table.items() if parent == pid]
    return rss_mb(pid), sum(rss_mb(p) for p in children)


def measure_idle(
    server: InChild, bus: BusSetup, *, stored: tuple[int, float], plan: Plan, processes: int
) -> IdleResult:
    tag = uuid.uuid4().hex[:8]
    tokens, _ = server.tokens(plan.idle_subscribers, "bench-fanout-idle")
    with contextlib.ExitStack() as stack:
        subs = Subscribers(
            stack,
            server.target,
            [subscribe_request()] * len(tokens),
            tokens,
            tag,
            processes=processes,
            keep=False,
        )
        open_s = subs.open()
        time.sleep(2.0)  # let opening settle
        before = subs.messages()
        meter = RoleMeter({"server": [server.pid], "subscribers": subs.pids})
        time.sleep(plan.idle_seconds)
        cores = meter.stop()
        heartbeats = subs.messages() - before
        rss, workers = _server_rss(server.pid)
        reports = subs.wait("now", 0, 10)
    return IdleResult(
        bus=bus.name,
        stored=stored[0],
        store_s=stored[1],
        subscribers=len(tokens),
        open_s=open_s,
        seconds=cores.seconds,
        cores=cores,
        rss_before_mb=server.rss_before,
        rss_mb=rss,
        workers_rss_mb=workers,
        heartbeats=heartbeats,
        failed=_failed(reports),
    )


def measure_sdk_catchup(server: Server, bus: BusSetup, tag: str, expected: int) -> CatchupResult:
    token, identity = server.partner("bench-fanout-catchup-sdk")
    timeout_s = max(120.0, expected / 2_000)
    who = _Client(server.target, token, identity, tag)
    with child_process(_sdk_catchup_process, who, expected, timeout_s) as conn:
        pid = _expect(conn, "ready", 120)
        meter = RoleMeter({"server": [server.pid], "subscribers": [pid]})
        conn.send("go")
        start, end, distinct, repeated, error = _expect(conn, "done", timeout_s + 60)
        cores = meter.stop()
    failed = Failed(1, error) if error else Failed()
    return CatchupResult(
        bus.name, "SDK", 1, expected, end - start, distinct, repeated, cores, failed
    )


def measure_raw_catchup(
    server: InProcess,
    bus: BusSetup,
    tag: str,
    *,
    expected: int,
    subscribers: int,
    processes: int,
) -> CatchupResult:
    tokens, _ = server.tokens(subscribers, "bench-fanout-catchup")
    with contextlib.ExitStack() as stack:
        subs = Subscribers(
            stack,
            server.target,
            [subscribe_request(True)] * subscribers,
            tokens,
            tag,
            processes=processes,
            wave=None,  # all at once
        )
        meter = RoleMeter({"subscribers": subs.pids})
        subs.open()
        reports = subs.wait("drained", expected, max(120.0, subscribers * expected / 2_000))
        cores = meter.stop()
    start = min(r.start for r in reports)
    # Until the last stream had everything (streams that ended early: until their end).
    end = max((t for r in reports for t in r.last if not math.isnan(t)), default=math.nan)
    received = repeated = 0
    for report in reports:
        for seqs, _ in report.streams:
            distinct = len(set(seqs))
            received += distinct
            repeated += len(seqs) - distinct
    return CatchupResult(
        bus.name,
        "raw",
        subscribers,
        expected,
        end - start,
        received,
        repeated,
        cores,
        _failed(reports),
    )


# -- output ----------------------------------------------------------------------------------


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cores(c: Cores, *roles: str) -> str:
    return "/".join(f"{c[r]:.2f}" for r in roles)


def live_table(results: Sequence[LiveResult]) -> str:
    headers = ["bus", "streams", "open s", "offered/s", "sent/s", "answer p50/p99"]
    headers += ["delivery p50", "p99"]
    headers += ["max", "received/expected", "repeated", "failed", "deliveries/s"]
    headers += ["per server core"]
    headers += ["msg B", "per msg", "audited", "cores srv/sub/send/kafka", "ours/all", "procs"]
    rows = []
    for r in results:
        rows.append(
            [
                r.bus,
                f"{r.case.subscribers:,}",
                f"{r.open_s:.1f}",
                f"{r.case.rate:,.0f}",
                f"{r.sent_rate:,.0f}",
                f"{_ms(percentile(r.ack_ms, 0.5))} / {_ms(percentile(r.ack_ms, 0.99))}",
                _ms(percentile(r.delivery_ms, 0.5)),
                _ms(percentile(r.delivery_ms, 0.99)),
                _ms(max(r.delivery_ms, default=math.nan)),
                f"{r.received:,}/{r.expected:,}",
                f"{r.repeated:,}",
                str(r.failed.streams),
                f"{r.rate:,.0f}",
                f"{r.per_server_core:,.0f}",
                f"{r.message_bytes:,.0f}",
                f"{r.per_message:.1f}",
                "n/a" if r.audited is None else f"{r.audited:,}",
                _cores(r.cores, "server", "subscribers", "submitter", "kafka"),
                str(r.cores.use),
                str(r.processes),
            ]
        )
    return table(headers, rows)


def bare_table(results: Sequence[BareResult]) -> str:
    headers = ["streams", "msg B", "per msg", "sized from", "messages", "seconds", "messages/s"]
    headers += ["deliveries/s", "per server core", "failed", "cores srv/sub", "ours/all"]
    headers += ["procs"]
    rows = [
        [
            f"{r.streams:,}",
            f"{r.message_bytes:,}",
            str(r.per_message),
            r.sized_from,
            f"{r.messages:,}",
            f"{r.seconds:.2f}",
            f"{r.message_rate:,.0f}",
            f"{r.delivery_rate:,.0f}",
            f"{r.per_server_core:,.0f}",
            str(r.failed.streams),
            _cores(r.cores, "server", "subscribers"),
            str(r.cores.use),
            str(r.processes),
        ]
        for r in results
    ]
    return table(headers, rows)


def idle_table(results: Sequence[IdleResult]) -> str:
    headers = ["bus", "stored", "store s", "stored/s", "streams", "open s", "idle s"]
    headers += ["server CPU", "sub. CPU", "RSS MB", "(before server)", "workers RSS MB"]
    headers += ["heartbeats", "failed", "ours/all"]
    rows = [
        [
            r.bus,
            f"{r.stored:,}",
            f"{r.store_s:.1f}",
            f"{r.stored / r.store_s:,.0f}" if r.store_s > 0 else "n/a",
            f"{r.subscribers:,}",
            f"{r.open_s:.1f}",
            f"{r.seconds:.1f}",
            f"{r.cores['server']:.1%}",
            f"{r.cores['subscribers']:.1%}",
            f"{r.rss_mb:,.0f}",
            f"{r.rss_before_mb:,.0f}",
            f"{r.workers_rss_mb:,.0f}",
            f"{r.heartbeats:,}",
            str(r.failed.streams),
            str(r.cores.use),
        ]
        for r in results
    ]
    return table(headers, rows)


def catchup_table(results: Sequence[CatchupResult]) -> str:
    headers = ["bus", "reader", "streams", "objects each", "seconds", "objects/s (all)"]
    headers += ["received/expected", "repeated", "failed", "cores srv/sub/kafka", "ours/all"]
    rows = [
        [
            r.bus,
            r.who,
            f"{r.subscribers:,}",
            f"{r.objects:,}",
            f"{r.seconds:.2f}",
            f"{r.rate:,.0f}",
            f"{r.received:,}/{r.objects * r.subscribers:,}",
            f"{r.repeated:,}",
            str(r.failed.streams),
            _cores(r.cores, "server", "subscribers", "kafka"),
            str(r.cores.use),
        ]
        for r in results
    ]
    return table(headers, rows)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "NOT met"


def _find_live(results: Sequence[LiveResult], bus: str, case: LiveCase) -> LiveResult | None:
    return next((r for r in results if r.bus == bus and r.case == case), None)


def _find_bare(results: Sequence[BareResult], streams: int) -> BareResult | None:
    return next((r for r in results if r.streams == streams), None)


def _live_targets(res: Results) -> list[str]:
    lines = []
    for r in res.live:
        p99 = percentile(r.delivery_ms, 0.99)
        ack99 = percentile(r.ack_ms, 0.99)
        if r.case.name == "fast":
            goal = TARGET_DELIVERY_P99_MS if r.bus == "local" else TARGET_DELIVERY_P99_KAFKA_MS
            lines.append(
                f"[{r.bus}] {r.case.subscribers} streams at {r.case.rate:,.0f}/s: delivery p99"
                f" {_ms(p99)} ms (target <= {goal:g}): {_met(p99 <= goal)}"
            )
            if r.bus == "local":
                lines.append(
                    f"[{r.bus}] submit-to-answer p99 {_ms(ack99)} ms (target <="
                    f" {TARGET_ANSWER_P99_MS:g}): {_met(ack99 <= TARGET_ANSWER_P99_MS)}"
                )
            bare = _find_bare(res.bare, r.case.subscribers)
            vs = (
                f" = {r.per_server_core / bare.per_server_core:.2f}x bare grpc.aio streaming"
                f" ({bare.per_server_core:,.0f} per server core, {bare.delivery_rate:,.0f}/s)"
                if bare
                else " (no bare baseline in this run)"
            )
            lines.append(
                f"[{r.bus}] {r.rate:,.0f} deliveries/s, {r.per_server_core:,.0f} per server core"
                f" ({r.cores['server']:.2f} cores){vs}"
            )
        else:
            lines.append(
                f"[{r.bus}] {r.case.subscribers:,} streams at {r.case.rate:,.0f}/s: delivery p99"
                f" {_ms(p99)} ms (target <= {TARGET_WIDE_P99_MS:g}):"
                f" {_met(p99 <= TARGET_WIDE_P99_MS)};"
                f" subscriber side {r.cores['subscribers']:.2f} cores in {r.processes} process(es)"
            )
        ok = r.received == r.expected and r.repeated == 0
        lines.append(
            f"[{r.bus}] {r.case.subscribers:,} streams: {r.expected - r.received:,} lost,"
            f" {r.repeated:,} repeated (target 0, 0): {_met(ok)}"
        )
    return lines


def _other_targets(res: Results) -> list[str]:
    lines = []
    for i in res.idle:
        cpu = i.cores["server"]
        lines.append(
            f"[{i.bus}] idle, {i.subscribers:,} streams, {i.stored:,} stored: server CPU"
            f" {cpu:.1%} of a core (target <= {TARGET_IDLE_CPU:.0%}):"
            f" {_met(cpu <= TARGET_IDLE_CPU)}; RSS {i.rss_mb:,.0f} MB (target <="
            f" {TARGET_RSS_MB:,.0f}): {_met(i.rss_mb <= TARGET_RSS_MB)}"
            f" (+ {i.workers_rss_mb:,.0f} MB in validation workers)"
        )
    for c in res.catchup:
        if c.who == "SDK":
            lines.append(
                f"[{c.bus}] one SDK subscriber catching up {c.objects:,}: {c.rate:,.0f} objects/s"
                f" (target >= {TARGET_CATCHUP_RATE:,.0f}): {_met(c.rate >= TARGET_CATCHUP_RATE)}"
            )
        elif c.subscribers > 1:
            one = next(
                (
                    o
                    for o in res.catchup
                    if o.bus == c.bus and o.who == "raw" and o.subscribers == 1
                ),
                None,
            )
            if one is not None:
                ratio = c.seconds / one.seconds
                lines.append(
                    f"[{c.bus}] {c.subscribers} catching up {c.objects:,} each at once:"
                    f" {c.seconds:.2f} s = {ratio:.1f}x one's {one.seconds:.2f} s (target <="
                    f" {TARGET_CATCHUP_RATIO:g}x): {_met(ratio <= TARGET_CATCHUP_RATIO)}"
                )
        if c.received != c.objects * c.subscribers or c.repeated:
            lines.append(
                f"[{c.bus}] catch-up ({c.who}, {c.subscribers}): "
                f"{c.objects * c.subscribers - c.received:,} lost, {c.repeated:,} repeated"
            )
    return lines


def _failures(res: Results) -> list[str]:
    """A line for each measurement with streams that ended early."""
    found: list[tuple[str, Failed]] = []
    found += [(f"[{r.bus}] live, {r.case.subscribers:,} streams", r.failed) for r in res.live]
    found += [(f"baseline, {r.streams:,} streams", r.failed) for r in res.bare]
    found += [(f"[{r.bus}] idle, {r.subscribers:,} streams", r.failed) for r in res.idle]
    found += [
        (f"[{r.bus}] catch-up, {r.who}, {r.subscribers:,} stream(s)", r.failed) for r in res.catchup
    ]
    return [
        f"{what}: {failed.streams:,} stream(s) ended early ({failed.reason})"
        for what, failed in found
        if failed.streams
    ]


def print_report(args: argparse.Namespace, plan: Plan, res: Results) -> None:
    if res.live:
        print()
        print("Live: bundles of 10 from one SDK client in a submitting process of its own")
        print(f"(open loop, {LATENCY_SENDERS} sender threads), {plan.live_seconds:g} s;")
        print("streams = Subscribe streams, each a partner and a channel of its own, read")
        print("raw by `procs` spawned processes (opened 50 at a time per process: open s).")
        print("Times in ms: answer = submit() to its")
        print("answer; delivery = just before submit() to receipt (wall clock, same")
        print("machine). received = distinct objects summed over the streams; deliveries/s")
        print("from the first submit to the last receipt; per server core = deliveries per")
        print("CPU-second of the server (this process and its validation workers); msg B /")
        print("per msg = mean bytes and deliveries of the messages that held deliveries;")
        print("audited = entries the audit recorder appended meanwhile (DELIVER entries,")
        print("queued behind the deliveries; SUBMIT entries are written with the objects);")
        print("cores = average cores busy: server / subscriber processes / submitting process")
        print("/ Tansu, and this run's process tree / the whole machine.")
        print(live_table(res.live))
    if res.bare:
        print()
        print("Baseline: bare grpc.aio server streaming (a generic handler on its own event")
        print("loop in a thread of this process, `await context.write(message)` of one")
        print("pre-encoded SubscribeResponse-shaped message), to as many streams as the live")
        print("case, read by the same subscriber code, as fast as they go:")
        print(bare_table(res.bare))
    if res.idle:
        print()
        print(f"Idle: {plan.idle_subscribers:,} Subscribe streams (from now, nothing new) on a")
        print("server holding the stored objects (submitted through the SDK in bundles of")
        print(f"{STORE_BUNDLE:,}, one client); measured after 2 s of quiet. The server runs in a")
        print("process of its own here: CPU = % of one core used by it and its validation")
        print("workers; RSS of its process (and what it held before the server started), and")
        print("of its workers; heartbeats = messages the streams received in the window.")
        print(idle_table(res.idle))
    if res.catchup:
        print()
        print("Catch-up: SDK = ExchangeClient.subscribe(from_beginning=True) in a process of")
        print("its own reading every stored object; raw = raw streams from the beginning of")
        print(f"a fresh store of {plan.catchup_objects:,} objects, one stream, then")
        print(
            f"{plan.catchup_subscribers} at once (each a partner of its own); seconds = from before"
        )
        print("the first call until the last stream had all its objects.")
        print(catchup_table(res.catchup))
    print()
    print('Targets of "Fan-out at scale" (printed, never asserted):')
    for line in _live_targets(res) + _other_targets(res) + _failures(res):
        print(f"   {line}")


def print_header(args: argparse.Namespace, plan: Plan) -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print("Fan-out benchmark: bench/fanout.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()} CPUs ({usable} usable), {cpu_model()}, {platform.system()}")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"versions: {versions()}")
    load = background_load()
    print(f"before start: cores busy {load.machine or 0:.2f} of {os.cpu_count()} (other users)")
    print("server: ExchangeServer in this process (tests.helpers.ServerThread), a fresh one")
    print("  per measurement: validation_workers=0, audit log on (every delivery recorded),")
    print(f"  subscriptions.max_open={MAX_OPEN:,}, otherwise tests.helpers.settings_for's")
    print(f"  settings; subscriber processes: {args.subscriber_processes}; pid {os.getpid()}")


# -- main --------------------------------------------------------------------------------------


@dataclass
class Results:
    live: list[LiveResult] = field(default_factory=list)
    bare: list[BareResult] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
    catchup: list[CatchupResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _attempt(
    res: Results, what: str, measure: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T | None:
    """Run one measurement; a failure is reported, and the others still run."""
    started = time.perf_counter()
    progress(f"{what} ...")
    try:
        result = measure(*args, **kwargs)
    except Exception as exc:
        res.failures.append(f"{what}: {exc!r}")
        progress(f"{what}: FAILED {exc!r}")
        return None
    progress(f"{what}: {time.perf_counter() - started:.1f} s")
    return result


def run_stored(bus: BusSetup, plan: Plan, args: argparse.Namespace, res: Results) -> None:
    """Idle and the SDK catch-up, on one server (a process of its own, so that its RSS
    is its own) holding ``plan.stored`` objects."""
    tag = uuid.uuid4().hex[:8]
    try:
        with server_process(bus) as server:
            _measure_stored(server, bus, plan, args, res=res, tag=tag)
    except Exception as exc:
        res.failures.append(f"[{bus.name}] the server process for idle and catch-up: {exc!r}")
        progress(f"[{bus.name}] the server process for idle and catch-up: FAILED {exc!r}")


def _measure_stored(
    server: InChild, bus: BusSetup, plan: Plan, args: argparse.Namespace, *, res: Results, tag: str
) -> None:
    what = f"[{bus.name}] storing {plan.stored:,} objects"
    stored = _attempt(res, what, store_objects, server, tag, plan.stored)
    if stored is None:
        return
    if "idle" in args.sections:
        what = f"[{bus.name}] idle, {plan.idle_subscribers:,} streams"
        idle = _attempt(
            res,
            what,
            measure_idle,
            server,
            bus,
            stored=stored,
            plan=plan,
            processes=args.subscriber_processes,
        )
        if idle is not None:
            res.idle.append(idle)
    if "catchup" in args.sections:
        what = f"[{bus.name}] catch-up, one SDK subscriber, {stored[0]:,} objects"
        done = _attempt(res, what, measure_sdk_catchup, server, bus, tag, stored[0])
        if done is not None:
            res.catchup.append(done)


def run_catchup(bus: BusSetup, plan: Plan, args: argparse.Namespace, res: Results) -> None:
    """One raw stream, then many at once, reading a fresh store from the beginning."""
    try:
        _run_catchup(bus, plan, args, res)
    except Exception as exc:
        res.failures.append(f"[{bus.name}] the server for catch-up: {exc!r}")
        progress(f"[{bus.name}] the server for catch-up: FAILED {exc!r}")


def _run_catchup(bus: BusSetup, plan: Plan, args: argparse.Namespace, res: Results) -> None:
    tag = uuid.uuid4().hex[:8]
    with fanout_server(bus) as in_process:
        server = InProcess(in_process)
        what = f"[{bus.name}] storing {plan.catchup_objects:,} objects"
        stored = _attempt(res, what, store_objects, server, tag, plan.catchup_objects)
        if stored is None:
            return
        for n in (1, plan.catchup_subscribers):
            what = f"[{bus.name}] catch-up, {n} raw stream(s), {stored[0]:,} objects each"
            done = _attempt(
                res,
                what,
                measure_raw_catchup,
                server,
                bus,
                tag,
                expected=stored[0],
                subscribers=n,
                processes=1 if n == 1 else args.subscriber_processes,
            )
            if done is not None:
                res.catchup.append(done)


def run_bus(bus: BusSetup, plan: Plan, args: argparse.Namespace, res: Results) -> None:
    if "live" in args.sections:
        for case in plan.live:
            if case.name not in args.live:
                continue
            what = f"[{bus.name}] live, {case.subscribers:,} streams at {case.rate:,.0f} objects/s"
            done = _attempt(
                res,
                what,
                measure_live,
                bus,
                case,
                seconds=args.seconds or plan.live_seconds,
                drain_s=plan.drain_s,
                processes=args.subscriber_processes,
            )
            if done is not None:
                res.live.append(done)
    if args.sections & {"idle", "catchup"}:
        run_stored(bus, plan, args, res)
    if "catchup" in args.sections:
        run_catchup(bus, plan, args, res)


def run_baseline(plan: Plan, args: argparse.Namespace, res: Results) -> None:
    for case in plan.live:
        if case.name not in args.live:
            continue
        # The same bytes as the exchange's messages in this run (embedded bus first).
        live = _find_live(res.live, "local", case) or _find_live(res.live, "kafka", case)
        per, size, sized = case.bundle_size, None, "built"
        if live is not None and live.messages:
            per, size = max(1, round(live.per_message)), round(live.message_bytes)
            sized = f"live {live.bus}"
        what = f"baseline: bare grpc.aio streaming to {case.subscribers:,} streams"
        done = _attempt(
            res,
            what,
            measure_bare,
            case.subscribers,
            plan.baseline_messages,
            per_message=per,
            size=size,
            processes=args.subscriber_processes,
            sized_from=sized,
        )
        if done is not None:
            res.bare.append(done)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM: the same clean-up as Ctrl-C


SECTIONS = ("live", "baseline", "idle", "catchup")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Prints numbers only; never fails on a timing. Progress goes to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter runs")
    parser.add_argument("--bus", choices=("local", "kafka", "both"), default="both")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--live",
        default=",".join(LIVE_NAMES),
        help="live (and baseline) cases: fast (100 streams at 1,000 objects/s), wide (1,000"
        " streams at 100/s; 250 with --quick); default both",
    )
    parser.add_argument("--seconds", type=float, help="live load duration (default 10, quick 3)")
    parser.add_argument("--stored", type=int, help="objects stored for idle and SDK catch-up")
    parser.add_argument(
        "--subscriber-processes",
        type=int,
        default=2,
        help="processes reading the streams (default 2)",
    )
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    args.sections = sections
    args.live = {s.strip() for s in args.live.split(",") if s.strip()}
    if unknown := args.live - set(LIVE_NAMES):
        parser.error(f"unknown live case(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.stored:
        plan = dataclasses.replace(plan, stored=args.stored)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    print_header(args, plan)
    res = Results()
    try:
        buses = ["local", "kafka"] if args.bus == "both" else [args.bus]
        for name in buses if args.sections - {"baseline"} else []:
            with contextlib.ExitStack() as stack:
                bootstrap = None
                if name == "kafka":
                    bootstrap = stack.enter_context(tansu_broker())
                    print(f"kafka: Tansu ({tansu_version()}) at {bootstrap}, in-memory storage")
                run_bus(BusSetup(name, bootstrap), plan, args, res)
        if "baseline" in args.sections:
            run_baseline(plan, args, res)
    except KeyboardInterrupt:
        progress("interrupted: everything this run started has been stopped")
        return 130
    print_report(args, plan, res)
    for failure in res.failures:
        print(f"FAILED: {failure}")
    print(f"\nrun time: {time.perf_counter() - started:.0f} s")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())

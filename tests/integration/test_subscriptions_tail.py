"""The shared live tail (exchange._tail) behind Subscribe, on both buses: many
streams opened at different moments, a slow stream that falls out of the tail's
window, a partner whose topic is new to the tail; plus the tail on its own."""

from __future__ import annotations

import asyncio
import base64
import functools
import random
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient, ExchangeError, Subscription

from exchange import policy
from exchange._feed import Feed
from exchange._subscription_request import StreamPosition
from exchange._tail import LiveTail
from exchange.bus import BusRecord, ReadRecord, TopicPartition
from exchange.bus.local import LocalBus
from exchange.errors import Unavailable
from exchange.model import Tlp
from exchange.subscriptions import Cursor, Subscriptions
from tests.bus_readers import ReaderLog
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
    tlp_of,
    wait_until,
)

SHARED = (Tlp.CLEAR, Tlp.GREEN)
BUSES = ["local", pytest.param("kafka", marks=pytest.mark.kafka)]


def start_server(
    request: pytest.FixtureRequest, tmp_path: Path, tail_window: int = 50_000
) -> ServerThread:
    """A server on the bus of the test's parameter, with this tail window."""
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    settings = settings_for(
        tmp_path / "data", bootstrap, subscriptions={"tail_window": tail_window}
    )
    return ServerThread(settings).start()


@pytest.fixture(params=BUSES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    srv = start_server(request, tmp_path)
    yield srv
    srv.stop()


@pytest.fixture(params=BUSES)
def small_window_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    srv = start_server(request, tmp_path, tail_window=20)
    yield srv
    srv.stop()


def subscriptions(server: ServerThread) -> Subscriptions:
    assert server.server is not None
    return server.server.subscriptions


def published(server: ServerThread) -> int:
    assert server.server is not None
    return server.server.relay.published


def readers_of(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> ReaderLog:
    """Every bus reader the server opens from now on."""
    assert server.server is not None
    return ReaderLog.on(server.server.bus, monkeypatch)


@dataclass
class Stream:
    """One Subscribe stream read by its own thread into ``ids``."""

    name: str
    who: PartnerCredentials
    client: ExchangeClient
    sub: Subscription
    ids: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._read, name=self.name, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            for delivery in self.sub:
                self.cursors.append(delivery.cursor)
                self.ids.append(delivery.object_id)  # last: a reader of ids sees the cursor
        except ExchangeError as exc:
            self.errors.append(exc)

    def has(self, wanted: Iterable[str]) -> bool:
        return set(wanted) <= set(self.ids)

    def stop(self) -> None:
        self.sub.cancel()
        if self.thread is not None:
            self.thread.join(10)
        self.client.close()


def open_stream(server: ServerThread, name: str, who: PartnerCredentials, **kw: Any) -> Stream:
    client = ExchangeClient(server.target, token=who.token)
    sub = client.subscribe(**kw)
    stream = Stream(name, who, client, sub).start()
    # The first message (the start cursor) says the stream is established.
    wait_until(lambda: sub.last_cursor is not None, 30, f"{name} to start")
    return stream


def assert_exactly(stream: Stream, expected: Iterable[str]) -> None:
    wanted = list(expected)
    assert not stream.errors, f"{stream.name}: {stream.errors}"
    assert len(stream.ids) == len(set(stream.ids)), f"{stream.name} received a repeat"
    assert set(stream.ids) == set(wanted), (
        f"{stream.name}: {len(set(wanted) - set(stream.ids))} missing, "
        f"{len(set(stream.ids) - set(wanted))} unexpected"
    )


# -- many streams, opened at different moments -----------------------------------------


def test_many_streams_opened_while_submitting_each_get_exactly_theirs(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers = readers_of(server, monkeypatch)
    ngo = server.add_partner("harbor-light")
    others = [server.add_partner(f"kestrel-{i}", sector="technology") for i in range(2)]
    partners = [ngo, *others]
    rng = random.Random(5)
    bundles = [
        [
            indicator(ngo.identity, n=b * 10 + i, tlp=rng.choice([*SHARED, Tlp.AMBER]))
            for i in range(10)
        ]
        for b in range(64)
    ]
    # Submission order is exchange-sequence order (one submitter, one bundle at a time).
    order = [o["id"] for b in bundles for o in b]
    index = {oid: i for i, oid in enumerate(order)}
    shared = [o["id"] for b in bundles for o in b if tlp_of(o) in SHARED]
    # The submitter receives all its own objects; the others the shared ones.
    visible = {p.partner_id: (order if p is ngo else shared) for p in partners}
    submitted = 0  # bundles answered so far

    def submit_all() -> None:
        nonlocal submitted
        with ExchangeClient(server.target, token=ngo.token) as c:
            for b in bundles:
                assert c.submit(bundle(b)).ok
                submitted += 1

    submitter = threading.Thread(target=submit_all, name="submitter", daemon=True)
    streams: list[Stream] = []
    # What each stream must receive at least, and exactly (None: checked as "from now").
    must: dict[str, set[str]] = {}
    exact: dict[str, list[str] | None] = {}
    # "From now": nothing published before it opened; everything submitted after it started.
    low: dict[str, int] = {}
    try:
        submitter.start()
        # History first: the tail then starts after it, and early streams catch up privately.
        wait_until(lambda: published(server) >= 40, 60, "a history to catch up on")
        for i in range(30):
            k = 4 + 2 * i
            wait_until(functools.partial(lambda k: submitted >= k, k), 60, f"bundle {k}")
            who = partners[i % len(partners)]
            wanted = visible[who.partner_id]
            name = f"s{i}"
            if i < len(partners) or i % 3 == 0:
                streams.append(open_stream(server, name, who, from_beginning=True))
                must[name] = set(wanted)
                exact[name] = wanted
            elif i % 3 == 1:
                before = published(server)
                streams.append(open_stream(server, name, who))
                # A bundle that starts after this one answered starts after the stream.
                after = 10 * (submitted + 1)
                must[name] = {x for x in wanted if index[x] >= after}
                exact[name] = None
                low[name] = before
            else:
                # A cursor taken mid-way through an earlier stream of the same partner.
                def source_of(p: PartnerCredentials) -> Stream | None:
                    return next((s for s in streams if s.who is p and len(s.ids) >= 2), None)

                wait_until(
                    functools.partial(lambda p: source_of(p) is not None, who),
                    30,
                    "an earlier stream to receive something",
                )
                source = source_of(who)
                assert source is not None
                taken = len(source.ids) // 2
                skip = set(source.ids[:taken])
                streams.append(open_stream(server, name, who, cursor=source.cursors[taken - 1]))
                must[name] = set(wanted) - skip
                exact[name] = [x for x in wanted if x not in skip]
        submitter.join(120)
        assert not submitter.is_alive() and submitted == len(bundles)
        for stream in streams:
            wait_until(
                functools.partial(stream.has, must[stream.name]),
                60,
                f"{stream.name} to receive everything",
            )
        # The point of the tail: streams that started in history caught up privately,
        # then followed the shared reader (their private readers closed, streams open).
        assert readers.private(policy.SHARED_TOPICS)
        wait_until(
            lambda: not [r for r in readers.private(policy.SHARED_TOPICS) if not r.closed],
            30,
            "every stream to follow the tail",
        )
    finally:
        for stream in streams:
            stream.stop()

    for stream in streams:
        expected = exact[stream.name]
        if expected is None:
            # From now: a suffix of what the partner may see, cut at a relay batch
            # published after the stream's lower bound, holding every later object.
            wanted = visible[stream.who.partner_id]
            expected = wanted[len(wanted) - len(stream.ids) :]
            assert all(index[x] >= low[stream.name] for x in expected), stream.name
            assert must[stream.name] <= set(expected), stream.name
        assert_exactly(stream, expected)


# -- a slow stream -------------------------------------------------------------------------


def test_a_slow_stream_falls_out_of_the_window_and_catches_up_exactly_once(
    small_window_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = small_window_server
    readers = readers_of(server, monkeypatch)
    subs = subscriptions(server)
    tail = subs.tail
    assert tail.window == 20
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    # No BDP probing: the slow client's receive window stays small, so the server's
    # side of its stream stops early once the client stops reading.
    slow_client = ExchangeClient(
        server.target, token=platform.token, options=[("grpc.http2.bdp_probe", 0)]
    )
    # From the beginning of an empty feed: it follows the tail from its first read.
    slow_sub = slow_client.subscribe(from_beginning=True)
    fast = open_stream(server, "fast", ngo)
    first = indicator(ngo.identity, n=0, tlp=Tlp.GREEN)
    sent = [first["id"]]
    padding = "x" * 20_000
    try:
        with ExchangeClient(server.target, token=ngo.token) as c:
            assert c.submit(bundle([first])).ok
            # The slow stream takes one delivery, then its client stops reading.
            assert next(slow_sub).object_id == first["id"]
            n = 1
            while True:
                objs = [
                    indicator(ngo.identity, n=n + i, tlp=Tlp.GREEN, description=padding)
                    for i in range(10)
                ]
                n += len(objs)
                assert c.submit(bundle(objs)).ok
                sent.extend(o["id"] for o in objs)
                # The others keep receiving: the tail does not wait for the slow one.
                wait_until(functools.partial(fast.has, list(sent)), 30, "the fast stream")
                # What the server handed the slow stream: all deliveries but the fast one's.
                slow_server_side = subs.delivered - len(fast.ids)
                if len(sent) - slow_server_side > 3 * tail.window:
                    break  # the slow stream's position is far below what the tail holds
                assert n < 2000, "the server kept feeding a client that reads nothing"
        privately = len(readers.private(policy.SHARED_TOPICS))
        # The slow client reads again: everything, each once, through a private reader.
        got = [first["id"]]
        timer = threading.Timer(60.0, slow_sub.cancel)
        timer.start()
        try:
            # next(), not a for loop: leaving a for loop closes the subscription.
            while len(got) < len(sent):
                got.append(next(slow_sub).object_id)
        finally:
            timer.cancel()
        assert len(got) == len(set(got)) and set(got) == set(sent)
        # It had fallen out of the window: it caught up with a new private reader...
        assert len(readers.private(policy.SHARED_TOPICS)) > privately
        # ...and, caught up, it follows the tail again (its private reader closed while
        # it stays open): a new object arrives live.
        wait_until(
            lambda: all(r.closed for r in readers.private(policy.SHARED_TOPICS)),
            30,
            "the slow stream to rejoin the tail",
        )
        sentinel = indicator(ngo.identity, n=n, tlp=Tlp.CLEAR)
        with ExchangeClient(server.target, token=ngo.token) as c:
            assert c.submit(bundle([sentinel])).ok
        assert next(slow_sub).object_id == sentinel["id"]
        wait_until(lambda: fast.has([sentinel["id"]]), 30, "the fast stream's sentinel")
    finally:
        slow_sub.cancel()
        slow_client.close()
        fast.stop()
    assert_exactly(fast, [*sent, sentinel["id"]])


# -- a partner that arrives after the server started ---------------------------------------


def test_a_new_partner_receives_its_own_amber_objects_live(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    early = server.add_partner("harbor-light")
    watcher = open_stream(server, "early", early)  # the tail runs, without the newcomer's topic
    newcomer = server.add_partner("regional-office", sector="government")
    readers = readers_of(server, monkeypatch)
    stream = open_stream(server, "newcomer", newcomer)
    try:
        amber = [indicator(newcomer.identity, n=i, tlp=Tlp.AMBER) for i in range(5)]
        with ExchangeClient(server.target, token=newcomer.token) as c:
            assert c.submit(bundle(amber)).ok
        wait_until(lambda: stream.has(o["id"] for o in amber), 30, "the AMBER objects")
        # A shared object afterwards reaches both; the AMBER ones only their submitter.
        green = indicator(newcomer.identity, n=9, tlp=Tlp.GREEN)
        with ExchangeClient(server.target, token=newcomer.token) as c:
            assert c.submit(bundle([green])).ok
        wait_until(lambda: watcher.has([green["id"]]), 30, "the GREEN object")
        wait_until(lambda: stream.has([green["id"]]), 30, "the GREEN object")
    finally:
        stream.stop()
        watcher.stop()
    assert_exactly(stream, [*(o["id"] for o in amber), green["id"]])
    assert_exactly(watcher, [green["id"]])
    # The newcomer's topic joined the running tail, which read it when the relay had
    # published there; the stream followed the tail from the start: no private reader.
    cold = readers.cold(policy.SHARED_TOPICS)
    assert {f"partner.{newcomer.partner_id}"} in [r.topics() for r in cold]
    assert not readers.private(policy.SHARED_TOPICS)


def test_the_servers_tail_is_bounded_in_bytes(tmp_path: Path) -> None:
    """Defect 4: the tail kept 50,000 records whatever their size (0.95 GB of 99 KB
    objects took RSS to 1.6 GB). subscriptions.tail_window_bytes bounds it."""
    settings = settings_for(tmp_path / "data", subscriptions={"tail_window_bytes": 300_000})
    server = ServerThread(settings).start()
    try:
        tail = subscriptions(server).tail
        assert tail.window_bytes == 300_000
        ngo = server.add_partner("harbor-light")
        live = open_stream(server, "live", ngo)  # the tail reads while objects arrive
        objs = [
            indicator(ngo.identity, n=i, tlp=Tlp.GREEN, description="x" * 50_000) for i in range(20)
        ]
        try:
            with ExchangeClient(server.target, token=ngo.token) as c:
                assert c.submit(bundle(objs)).ok
            wait_until(lambda: live.has(o["id"] for o in objs), 30, "every object, live")
        finally:
            live.stop()
        assert_exactly(live, [o["id"] for o in objs])
        assert 200_000 < tail.held_bytes <= 300_000
    finally:
        server.stop()


# -- the tail on its own -----------------------------------------------------------------


def test_stream_cursors_encode_and_decode_like_cursor() -> None:
    offsets = {("green", 1): 7, ("clear", 0): -1, ("partner.p-1", 0): 3}
    position = StreamPosition(dict(offsets), {("green", 1): 12})
    expected = Cursor({("green", 1): (7, 12), ("clear", 0): (-1, -1), ("partner.p-1", 0): (3, -1)})
    assert position.cursor() == expected.encode()
    assert Cursor.decode(position.cursor()) == expected
    position.offsets[("clear", 0)] = 42
    position.seqs[("clear", 0)] = 99
    position.moved.add(("clear", 0))
    expected = Cursor({("green", 1): (7, 12), ("clear", 0): (42, 99), ("partner.p-1", 0): (3, -1)})
    assert position.cursor() == expected.encode()
    assert Cursor.decode(position.cursor()) == expected
    # Cursors issued before the pieces were padded (compact JSON) still decode.
    compact = base64.urlsafe_b64encode(
        orjson.dumps({"v": 1, "p": [["clear", 0, 42, 99], ["green", 1, 7, 12]]})
    )
    assert Cursor.decode(compact.decode().rstrip("=")).positions == {
        ("clear", 0): (42, 99),
        ("green", 1): (7, 12),
    }
    assert Cursor.decode(Cursor({}).encode()).positions == {}


class _Store:
    """Just what the tail asks a store: the relay-recorded positions."""

    def __init__(self, positions: Mapping[TopicPartition, int] | None = None) -> None:
        self.positions = dict(positions or {})

        self.asked = 0  # relay_positions calls

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        self.asked += 1
        wanted = set(topics)
        return {tp: off for tp, off in self.positions.items() if tp[0] in wanted}


def _records(topic: str, first: int, count: int, value: bytes = b"{}") -> list[BusRecord]:
    headers = (
        ("stix-type", b"indicator"),
        ("stix-version", b"2026-01-01T00:00:00.000Z"),
        ("spec-version", b"2.1"),
        ("tlp", b"green"),
        ("submitter", b"p"),
        ("submitter-identity", b"identity--x"),
        ("accepted-at", b"1.0"),
        ("labels", b"[]"),
        ("revoked", b"false"),
    )
    return [
        BusRecord(topic, f"indicator--{i}".encode(), value, (*headers, ("exchange-seq", b"%d" % i)))
        for i in range(first, first + count)
    ]


async def test_feed_switches_between_private_reader_and_tail_without_gap_or_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = LocalBus(tmp_path / "bus.sqlite3")
    readers = ReaderLog.on(bus, monkeypatch)
    await bus.start()
    await bus.ensure_topics(["t"])
    await bus.publish(_records("t", 0, 30))
    tp = ("t", 0)
    tail = LiveTail(_Store({tp: 30}), bus, window=10)  # type: ignore[arg-type]
    feed: Feed | None = None
    try:
        await tail.ensure([tp])
        feed = Feed(tail, bus, {tp: -1})
        got: list[int] = []

        async def read(n: int, until: int | None = None) -> None:
            assert feed is not None
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                got.extend(offset for _, offset, _ in await feed.read(n, 0.2))
                if until is None or len(got) >= until:
                    return
                assert asyncio.get_running_loop().time() < deadline, got

        await read(25)  # history: privately (a reader besides the tail's)
        assert feed.private and got == list(range(25)) and len(readers.still_open()) == 2
        await read(25)  # up to the tail's start (30)
        assert got == list(range(30))
        await bus.publish(_records("t", 30, 5))
        await read(25, until=35)  # the rule holds: switched, from memory
        assert not feed.private and got == list(range(35))
        assert len(readers.snapshot()) == 2 and len(readers.still_open()) == 1
        # The window (10) moves past the feed's position: it falls behind, reads privately.
        await bus.publish(_records("t", 35, 30))
        deadline = asyncio.get_running_loop().time() + 10
        while tail.covers({tp: 35}):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await read(5)
        assert feed.private and len(readers.snapshot()) == 3 and len(readers.still_open()) == 2
        await read(100, until=65)
        assert got == list(range(65))
        await read(100)  # caught up: the rule holds again
        assert not feed.private and len(readers.still_open()) == 1
    finally:
        if feed is not None:
            await feed.close()
        await tail.close()
        await bus.close()


async def test_the_tail_holds_at_most_its_window_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large records: the tail keeps what fits in window_bytes (far fewer than its
    window of records); a stream from the beginning still gets each record once, in
    reads bounded in bytes, and ends up following the tail."""
    bus = LocalBus(tmp_path / "bus.sqlite3")
    readers = ReaderLog.on(bus, monkeypatch)
    await bus.start()
    await bus.ensure_topics(["t"])
    await bus.publish(_records("t", 0, 40, value=b"x" * 10_000))
    tp = ("t", 0)
    tail = LiveTail(_Store({tp: 0}), bus, window=1000, window_bytes=100_000)  # type: ignore[arg-type]
    feed: Feed | None = None
    try:
        await tail.ensure([tp])
        deadline = asyncio.get_running_loop().time() + 10
        while not tail.take({tp: 39}, [tp], 1):  # the tail has read the last one
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert 80_000 < tail.held_bytes <= tail.window_bytes == 100_000
        assert not tail.covers({tp: 0}) and tail.covers({tp: 35})

        feed = Feed(tail, bus, {tp: -1}, max_bytes=25_000)
        got: list[int] = []
        reads = 0
        while len(got) < 40:
            assert asyncio.get_running_loop().time() < deadline + 10, got
            entries = await feed.read(1000, 0.2)
            assert len(entries) <= 2, "two records of 10 kB and their headers fill 25 kB"
            got.extend(offset for _, offset, _ in entries)
            reads += 1
        assert got == list(range(40)) and reads >= 20
        # Its private reader closed; the tail's reads on.
        assert not feed.private and len(readers.snapshot()) == 2
        assert len(readers.still_open()) == 1
    finally:
        if feed is not None:
            await feed.close()
        await tail.close()
        await bus.close()


class _BrokenReader:
    async def read(
        self, max_records: int, timeout_s: float, max_bytes: int | None = None
    ) -> list[ReadRecord]:
        raise Unavailable("the bus is down")

    async def close(self) -> None:
        pass


class _BrokenBus:
    def __init__(self) -> None:
        self.opens = 0

    async def open_reader(
        self, start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
    ) -> _BrokenReader:
        self.opens += 1
        return _BrokenReader()


async def test_a_tail_that_cannot_read_retries_then_reports_unavailable() -> None:
    bus = _BrokenBus()
    tail = LiveTail(_Store(), bus, unavailable_after_s=0.3)  # type: ignore[arg-type]
    await tail.ensure([("t", 0)])
    tail.check()  # failing, but not for long yet

    def failing() -> bool:
        try:
            tail.check()
        except Unavailable:
            return True
        return False

    deadline = asyncio.get_running_loop().time() + 10
    while not failing():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="the bus is down"):
        tail.check()
    assert bus.opens >= 2  # retried, reopening the reader
    await tail.close()
    with pytest.raises(Unavailable):
        tail.check()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("live-tail")]


async def test_quiet_topics_are_read_on_the_local_relays_word(tmp_path: Path) -> None:
    """While this process's relay leads, the tail asks the store about the quiet
    (partner) topics only when that relay says it published there, or once in
    ``cold_poll_idle_s`` (long here): its word is what brings the records in."""
    bus = LocalBus(tmp_path / "bus.sqlite3")
    await bus.start()
    await bus.ensure_topics(["partner.p-1"])
    tp = ("partner.p-1", 0)
    store = _Store({tp: 0})
    tail = LiveTail(
        store,  # type: ignore[arg-type]
        bus,
        hot_topics=policy.SHARED_TOPICS,
        cold_poll_idle_s=3600.0,
    )
    tail.follow_local_relay(lambda: True)
    try:
        await tail.ensure([tp])

        async def held() -> int:
            return len(tail.take({tp: 0}, [tp], 100) or [])

        # ensure()'s look, the cold reader's first (nothing to read), then its hour-long
        # pause.
        async with asyncio.timeout(10):
            while store.asked < 2:  # noqa: ASYNC110 (polling a counter)
                await asyncio.sleep(0.01)
        await bus.publish(_records("partner.p-1", 0, 3))
        store.positions[tp] = 3
        await asyncio.sleep(0.5)
        assert await held() == 0  # nobody said so: not read yet
        tail.relayed({("clear", 0): 9, tp: 3})
        async with asyncio.timeout(10):
            while await held() < 3:  # noqa: ASYNC110 (polling the tail)
                await asyncio.sleep(0.01)
        assert store.asked == 3
        # Positions it already holds wake nothing.
        tail.relayed({tp: 3})
    finally:
        await tail.close()
        await bus.close()

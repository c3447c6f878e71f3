"""Retries, backoff and reconnecting subscriptions, for both clients, against a fake
exchange that fails on cue. Waits are recorded, never slept."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from exchange_client import (
    AsyncExchangeClient,
    AuthenticationError,
    Delivery,
    ExchangeClient,
    ExchangeError,
    NotFound,
    PermissionDenied,
    Unavailable,
    ValidationError,
)
from exchange_client._retry import Backoff, UnaryRetry, is_retryable
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb import exchange_pb2_grpc as pb_grpc
from exchange_protocol.subscribe import RESUME_KEY, TOPICS_CHANGED

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"failed with {self._code.name}"


def delivery(n: int) -> pb.Delivery:
    obj = {"type": "indicator", "id": f"indicator--{n}", "modified": "2026-01-01T00:00:00.000Z"}
    return pb.Delivery(
        object=json.dumps(obj).encode(),
        object_id=obj["id"],
        object_type="indicator",
        version=obj["modified"],
        tlp=pb.TLP_GREEN,
        cursor=f"c{n}",
    )


@dataclass
class Stream:
    """One Subscribe call's script: these messages, then this ending (None: OK)."""

    messages: list[pb.SubscribeResponse] = field(default_factory=list)
    ending: grpc.StatusCode | None = None
    resume: bool = False  # the ending carries the exchange's "reopen at once" mark
    hold: bool = False  # after the messages, never answer (until cancelled)


class FlakyExchange(pb_grpc.ExchangeServiceServicer):
    """Fails unary calls with ``unary_failures`` codes first; plays ``streams`` in turn."""

    def __init__(self) -> None:
        self.unary_failures: list[grpc.StatusCode] = []
        self.streams: list[Stream] = []
        self.requests: list[Any] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def _fail_maybe(self, context: Any) -> None:
        with self.lock:
            code = self.unary_failures.pop(0) if self.unary_failures else None
        if code is not None:
            context.abort(code, f"failed with {code.name}")

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self.requests.append(request)
        self._fail_maybe(context)
        response = pb.SubmitResponse()
        for index, obj in enumerate(json.loads(request.bundle)["objects"]):
            response.results.add(
                object_id=obj["id"],
                index=index,
                version=obj.get("modified", ""),
                outcome=pb.OUTCOME_ACCEPTED,
            )
            self.objects[obj["id"]] = obj
        return response

    def SubmitStream(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        yield from ()

    def Erase(self, request: Any, context: Any) -> pb.EraseResponse:
        # Not what these tests exercise (tests/e2e/test_erasure.py runs the real one).
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("abort raises")

    def GetObject(self, request: Any, context: Any) -> pb.GetObjectResponse:
        self.requests.append(request)
        self._fail_maybe(context)
        obj = self.objects.get(request.object_id)
        if obj is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.object_id}")
        assert obj is not None
        return pb.GetObjectResponse(
            delivery=pb.Delivery(
                object=json.dumps(obj).encode(), object_id=obj["id"], version=obj["modified"]
            )
        )

    def Subscribe(self, request: Any, context: Any) -> Iterator[pb.SubscribeResponse]:
        self.requests.append(request)
        with self.lock:
            script = self.streams.pop(0) if self.streams else Stream()
        yield from script.messages
        while script.hold and context.is_active():
            time.sleep(0.01)
        if script.resume:
            context.set_trailing_metadata(((RESUME_KEY, TOPICS_CHANGED),))
        if script.ending is not None:
            context.abort(script.ending, f"stream ended with {script.ending.name}")


@pytest.fixture
def fake() -> Iterator[tuple[str, FlakyExchange]]:
    servicer = FlakyExchange()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def fast(client: ExchangeClient, waits: list[float]) -> ExchangeClient:
    """No real waiting, and the longest wait every time (jitter = 1.0)."""
    client._sleep = waits.append
    client._jitter = lambda: 1.0
    return client


def fast_async(client: AsyncExchangeClient, waits: list[float]) -> AsyncExchangeClient:
    async def sleep(delay: float) -> None:
        waits.append(delay)

    client._sleep = sleep
    client._jitter = lambda: 1.0
    return client


def batch(*numbers: int, cursor: str | None = None) -> pb.SubscribeResponse:
    last = f"c{numbers[-1]}" if numbers else ""
    return pb.SubscribeResponse(
        deliveries=[delivery(n) for n in numbers], cursor=cursor if cursor is not None else last
    )


# -- the policy itself -----------------------------------------------------------------


def test_backoff_doubles_from_100ms_up_to_the_cap_with_full_jitter() -> None:
    backoff = Backoff(maximum=1.0, random=lambda: 1.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(3) == 0.4
    assert Backoff(random=lambda: 0.5).delay(2) == 0.1
    assert Backoff(random=lambda: 0.0).delay(9) == 0.0
    assert Backoff().ceiling(10_000) == 30.0  # no overflow
    with pytest.raises(ValueError, match="positive"):
        Backoff(maximum=0)


def test_only_unavailable_is_retryable() -> None:
    assert is_retryable(RpcError(UNAVAILABLE))
    for code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ):
        assert not is_retryable(RpcError(code)), code


def test_unary_retry_stops_after_its_attempts_and_at_its_deadline() -> None:
    now = [100.0]
    retry = UnaryRetry(None, attempts=3, backoff=Backoff(random=lambda: 1.0))
    delays = []
    while True:
        retry.remaining()
        delay = retry.next_delay(RpcError(UNAVAILABLE))
        if delay is None:
            break
        delays.append(delay)
    assert delays == [0.1, 0.2]
    timed = UnaryRetry(1.0, backoff=Backoff(random=lambda: 1.0), clock=lambda: now[0])
    assert timed.remaining() == 1.0
    now[0] += 0.85
    assert timed.next_delay(RpcError(UNAVAILABLE)) == 0.1
    now[0] += 0.1
    assert timed.remaining() == pytest.approx(0.05)  # what is left of the call's timeout
    # A wait of 0.2 s would pass the deadline: give up now.
    assert timed.next_delay(RpcError(UNAVAILABLE)) is None


# -- idempotent calls retry; submissions do not -------------------------------------------


def test_get_retries_unavailable_then_succeeds(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.objects["indicator--1"] = {"id": "indicator--1", "modified": "v1"}
    servicer.unary_failures = [UNAVAILABLE, UNAVAILABLE]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        assert client.get("indicator--1").object_id == "indicator--1"
    assert waits == [0.1, 0.2]
    assert len(servicer.requests) == 3


def test_get_gives_up_after_a_few_attempts(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.unary_failures = [UNAVAILABLE] * 10
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client, pytest.raises(Unavailable):
        client.get("indicator--1")
    assert len(servicer.requests) == 4
    assert waits == [0.1, 0.2, 0.4]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    ],
)
def test_final_errors_are_not_retried(
    fake: tuple[str, FlakyExchange], code: grpc.StatusCode, error: type[ExchangeError]
) -> None:
    target, servicer = fake
    servicer.unary_failures = [code]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client, pytest.raises(error):
        client.get("indicator--1")
    assert waits == [] and len(servicer.requests) == 1


def test_submit_is_never_retried(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.unary_failures = [UNAVAILABLE]
    waits: list[float] = []
    objects = [{"type": "indicator", "id": "indicator--1", "modified": "v1"}]
    with fast(ExchangeClient(target, token="t"), waits) as client:
        with pytest.raises(Unavailable):
            client.submit(objects)
        assert waits == [] and len(servicer.requests) == 1
        assert client.submit(objects).accepted == ["indicator--1"]


async def test_async_get_retries_and_submit_does_not(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.objects["indicator--1"] = {"id": "indicator--1", "modified": "v1"}
    servicer.unary_failures = [UNAVAILABLE]
    waits: list[float] = []
    async with fast_async(AsyncExchangeClient(target, token="t"), waits) as client:
        assert (await client.get("indicator--1")).object_id == "indicator--1"
        assert waits == [0.1]
        servicer.unary_failures = [UNAVAILABLE]
        with pytest.raises(Unavailable):
            await client.submit([{"type": "indicator", "id": "indicator--2", "modified": "v"}])
        assert waits == [0.1]


def test_nobody_listening_names_the_target() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = f"127.0.0.1:{port}"
    waits: list[float] = []
    with (
        fast(ExchangeClient(target, token="t", timeout=5), waits) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.submit([{"type": "indicator", "id": "indicator--1"}])
    assert target in str(caught.value)


# -- subscriptions reconnect ---------------------------------------------------------------


def test_subscription_resumes_after_unavailable_without_gap_or_repeat(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [
        Stream([batch(cursor="c0"), batch(1, 2), batch(3)], ending=UNAVAILABLE),
        Stream(ending=UNAVAILABLE),  # the exchange is still down
        Stream([batch(cursor="c3"), batch(4, 5, cursor="c6")], ending=UNAVAILABLE),
        Stream([batch(cursor="c6"), batch(7)]),  # ends normally: iteration ends
    ]
    waits: list[float] = []
    calls: list[tuple[int, str]] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(
            types="indicator",
            from_beginning=True,
            on_reconnect=lambda attempt, err: calls.append((attempt, err.code)),
        )
        got = [d.object_id for d in sub]
    assert got == [f"indicator--{n}" for n in (1, 2, 3, 4, 5, 7)]
    starts = [(r.WhichOneof("start"), r.cursor, list(r.types)) for r in servicer.requests]
    assert starts == [
        ("from_beginning", "", ["indicator"]),
        ("cursor", "c3", ["indicator"]),
        ("cursor", "c3", ["indicator"]),
        ("cursor", "c6", ["indicator"]),  # the batch cursor: past what was filtered out
    ]
    # The count restarts after a message: 1, 2 (still down), then 1 again.
    assert calls == [(1, "UNAVAILABLE"), (2, "UNAVAILABLE"), (1, "UNAVAILABLE")]
    assert waits == [0.1, 0.2, 0.1]
    assert sub.reconnects == 3 and sub.last_cursor == "c7"


def test_before_the_first_message_it_resumes_from_the_requested_start(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [Stream(ending=UNAVAILABLE), Stream([batch(cursor="c4"), batch(5)])]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        assert [d.cursor for d in client.subscribe(cursor="c4")] == ["c5"]
        servicer.streams = [Stream(ending=UNAVAILABLE), Stream([batch(cursor="c0")])]
        assert list(client.subscribe()) == []
    assert [r.cursor for r in servicer.requests[:2]] == ["c4", "c4"]
    assert [r.WhichOneof("start") for r in servicer.requests[2:]] == [None, None]


def test_backoff_is_capped_by_max_backoff(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.streams = [Stream(ending=UNAVAILABLE) for _ in range(8)] + [Stream()]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        assert list(client.subscribe(max_backoff=0.5)) == []
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, ValidationError),
    ],
)
def test_subscription_raises_final_errors(
    fake: tuple[str, FlakyExchange], code: grpc.StatusCode, error: type[ExchangeError]
) -> None:
    target, servicer = fake
    servicer.streams = [Stream([batch(cursor="c0"), batch(1)], ending=code)]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe()
        assert next(sub).object_id == "indicator--1"
        with pytest.raises(error):
            next(sub)
        assert sub.closed
    assert waits == [] and len(servicer.requests) == 1


def test_without_reconnect_only_opening_is_retried(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.streams = [
        Stream(ending=UNAVAILABLE),
        Stream([batch(cursor="c0"), batch(1)], ending=UNAVAILABLE),
    ]
    waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(reconnect=False)
        assert next(sub).object_id == "indicator--1"
        with pytest.raises(Unavailable):
            next(sub)
        assert waits == [0.1]
        servicer.streams = [Stream(ending=UNAVAILABLE) for _ in range(5)]
        with pytest.raises(Unavailable):
            list(client.subscribe(reconnect=False))
    assert len(servicer.requests) == 2 + 4


def test_close_during_the_backoff_ends_iteration(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.streams = [Stream([batch(cursor="c0"), batch(1)], ending=UNAVAILABLE)]
    with ExchangeClient(target, token="t") as client:
        client._jitter = lambda: 1.0
        sub = client.subscribe(max_backoff=60.0)
        sub_iter = iter(sub)
        assert next(sub_iter).object_id == "indicator--1"
        # The next read fails, then waits 0.1 s, 0.2 s...; close it meanwhile.
        servicer.streams = [Stream(ending=UNAVAILABLE) for _ in range(100)]
        threading.Timer(0.5, sub.close).start()
        assert list(sub_iter) == []
    assert sub.closed


async def test_async_subscription_reconnects_like_the_sync_one(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    script = [
        Stream([batch(cursor="c0"), batch(1, 2)], ending=UNAVAILABLE),
        Stream(ending=UNAVAILABLE),
        Stream([batch(cursor="c2"), batch(3)]),
    ]
    servicer.streams = list(script)
    waits: list[float] = []
    calls: list[int] = []
    async with fast_async(AsyncExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(from_beginning=True, on_reconnect=lambda n, _: calls.append(n))
        got: list[Delivery] = [d async for d in sub]
        assert sub.last_cursor == "c3" and sub.closed
    async_view = ([d.object_id for d in got], [r.cursor for r in servicer.requests], waits)
    assert calls == [1, 2]

    servicer.streams, servicer.requests = list(script), []
    sync_waits: list[float] = []
    with fast(ExchangeClient(target, token="t"), sync_waits) as sync:
        sync_got = list(sync.subscribe(from_beginning=True))
    sync_view = ([d.object_id for d in sync_got], [r.cursor for r in servicer.requests], sync_waits)
    assert async_view == sync_view
    assert async_view[0] == ["indicator--1", "indicator--2", "indicator--3"]


async def test_async_subscription_raises_final_errors_and_closes(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [Stream([batch(cursor="c0")], ending=grpc.StatusCode.PERMISSION_DENIED)]
    async with AsyncExchangeClient(target, token="t") as client:
        sub = client.subscribe()
        with pytest.raises(PermissionDenied):
            await anext(sub)
        assert sub.closed


async def test_async_close_ends_a_waiting_subscription(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.streams = [Stream([batch(cursor="c0")], ending=UNAVAILABLE)] + [
        Stream(ending=UNAVAILABLE) for _ in range(100)
    ]
    async with AsyncExchangeClient(target, token="t") as client:
        sub = client.subscribe(max_backoff=60.0)
        reader = asyncio.create_task(anext(sub, None))
        # Close once it has reconnected at least once: it is then waiting, in a call
        # or in its backoff before the next one (60 s at most).
        deadline = asyncio.get_running_loop().time() + 10
        while len(servicer.requests) < 2:
            assert asyncio.get_running_loop().time() < deadline, "no reconnection"
            await asyncio.sleep(0.01)
        await sub.aclose()
        assert await asyncio.wait_for(reader, 5) is None
    assert client._closed


def test_async_client_is_built_without_a_running_loop(fake: tuple[str, FlakyExchange]) -> None:
    target, servicer = fake
    servicer.objects["indicator--1"] = {"id": "indicator--1", "modified": "v1"}
    client = AsyncExchangeClient(target, token="t")  # no loop here: the channel opens later

    async def main() -> str:
        async with client:
            return (await client.get("indicator--1")).object_id

    assert asyncio.run(main()) == "indicator--1"
    with pytest.raises(RuntimeError, match="closed"):
        client.subscribe()


# -- revoke over the wire ----------------------------------------------------------------------


def test_revoke_submits_the_latest_version_revoked_and_later(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    current = {
        "type": "indicator",
        "id": "indicator--1",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2999-01-01T00:00:00.000Z",  # in the future: revoked must still be later
        "name": "kept",
    }
    servicer.objects["indicator--1"] = current
    with ExchangeClient(target, token="t") as client:
        result = client.revoke("indicator--1")
    assert result.accepted == ["indicator--1"]
    submitted = json.loads(servicer.requests[-1].bundle)["objects"][0]
    assert submitted["revoked"] is True
    assert submitted["modified"] == "2999-01-01T00:00:00.001Z"
    assert {k: v for k, v in submitted.items() if k not in {"revoked", "modified"}} == {
        k: v for k, v in current.items() if k != "modified"
    }


# -- the exchange asks to resume; the first connection is bounded ---------------------------


class FakeTime:
    """A clock that the recorded waits move forward (nothing is slept)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        self.now += delay

    def on(self, client: ExchangeClient) -> ExchangeClient:
        client._clock, client._sleep, client._jitter = self.clock, self.sleep, lambda: 1.0
        return client

    def on_async(self, client: AsyncExchangeClient) -> AsyncExchangeClient:
        async def sleep(delay: float) -> None:
            self.sleep(delay)

        client._clock, client._sleep, client._jitter = self.clock, sleep, lambda: 1.0
        return client


RESUME_SCRIPT = [
    Stream([batch(cursor="c0"), batch(1, 2)], ending=UNAVAILABLE, resume=True),
    Stream([batch(cursor="c2"), batch(3), batch(cursor="c5")], ending=UNAVAILABLE, resume=True),
    Stream([batch(cursor="c5"), batch(6)]),
]


def test_a_resume_request_reopens_at_once_quietly(
    fake: tuple[str, FlakyExchange], caplog: pytest.LogCaptureFixture
) -> None:
    target, servicer = fake
    servicer.streams = list(RESUME_SCRIPT)
    waits: list[float] = []
    calls: list[int] = []
    caplog.set_level(logging.DEBUG, logger="exchange_client")
    with fast(ExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(from_beginning=True, on_reconnect=lambda n, _: calls.append(n))
        got = [d.object_id for d in sub]
    assert got == ["indicator--1", "indicator--2", "indicator--3", "indicator--6"]
    # Reopened from the last cursor handed out (the batch cursor past what was filtered).
    assert [r.cursor for r in servicer.requests] == ["", "c2", "c5"]
    assert waits == [] and calls == []
    assert sub.reconnects == 2
    assert [r.levelno for r in caplog.records if "asked to resume" in r.getMessage()] == [
        logging.DEBUG,
        logging.DEBUG,
    ]


async def test_async_resume_request_reopens_at_once_quietly(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = list(RESUME_SCRIPT)
    waits: list[float] = []
    calls: list[int] = []
    async with fast_async(AsyncExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(from_beginning=True, on_reconnect=lambda n, _: calls.append(n))
        got = [d.object_id async for d in sub]
    assert got == ["indicator--1", "indicator--2", "indicator--3", "indicator--6"]
    assert [r.cursor for r in servicer.requests] == ["", "c2", "c5"]
    assert waits == [] and calls == [] and sub.reconnects == 2


def test_a_resume_request_at_opening_is_backed_off(fake: tuple[str, FlakyExchange]) -> None:
    """A stream refused before its first message is no established stream to resume:
    backed off like an outage, so that a server repeating it cannot make a client spin."""
    target, servicer = fake
    servicer.streams = [
        Stream([batch(cursor="c0"), batch(1)], ending=UNAVAILABLE, resume=True),
        Stream(ending=UNAVAILABLE, resume=True),
        Stream([batch(cursor="c1"), batch(2)]),
    ]
    waits: list[float] = []
    calls: list[int] = []
    with fast(ExchangeClient(target, token="t"), waits) as client:
        sub = client.subscribe(on_reconnect=lambda n, _: calls.append(n))
        assert [d.object_id for d in sub] == ["indicator--1", "indicator--2"]
    assert waits == [0.1] and calls == [1]


def test_without_reconnect_a_resume_request_is_raised_as_such(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [Stream([batch(cursor="c0"), batch(1)], ending=UNAVAILABLE, resume=True)]
    with ExchangeClient(target, token="t") as client:
        sub = client.subscribe(reconnect=False)
        assert next(sub).object_id == "indicator--1"
        with pytest.raises(Unavailable) as caught:
            next(sub)
    assert caught.value.resume_requested
    assert sub.last_cursor == "c1"
    servicer.streams = [Stream([batch(cursor="c0")], ending=UNAVAILABLE)]
    with ExchangeClient(target, token="t") as client, pytest.raises(Unavailable) as outage:
        list(client.subscribe(reconnect=False))
    assert not outage.value.resume_requested


def first_delivery(target: str, time_: FakeTime, flavour: str, **kwargs: Any) -> Delivery:
    """The first delivery of a subscription, by the sync or the async client."""
    if flavour == "sync":
        with time_.on(ExchangeClient(target, token="t")) as client:
            return next(client.subscribe(**kwargs))

    async def run() -> Delivery:
        async with time_.on_async(AsyncExchangeClient(target, token="t")) as client:
            return await anext(client.subscribe(**kwargs))

    return asyncio.run(run())


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_connect_timeout_gives_up_on_a_first_stream_never_established(
    fake: tuple[str, FlakyExchange], flavour: str
) -> None:
    target, servicer = fake
    servicer.streams = [Stream(ending=UNAVAILABLE) for _ in range(100)]
    time_ = FakeTime()
    calls: list[int] = []
    with pytest.raises(Unavailable) as caught:
        first_delivery(
            target, time_, flavour, connect_timeout=10, on_reconnect=lambda n, _: calls.append(n)
        )
    assert "gave up after 10 s" in str(caught.value)
    assert "stream ended with UNAVAILABLE" in str(caught.value)  # why the last attempt failed
    # Retried quietly, up to the bound less the last attempt's grace (1 s), not past it.
    assert calls == []
    assert time_.waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 2.7])
    assert len(servicer.requests) == 8


def test_connect_timeout_bounds_a_server_that_never_answers(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [Stream(hold=True)]
    started = time.monotonic()
    with ExchangeClient(target, token="t") as client, pytest.raises(Unavailable) as caught:
        next(client.subscribe(connect_timeout=0.5))
    assert time.monotonic() - started < 10
    assert str(caught.value) == (
        f"cannot reach the exchange at {target}: no answer"
        " (gave up after 0.5 s; is the server running?)"
    )
    assert len(servicer.requests) == 1


async def test_async_connect_timeout_bounds_a_server_that_never_answers(
    fake: tuple[str, FlakyExchange],
) -> None:
    target, servicer = fake
    servicer.streams = [Stream(hold=True)]
    async with AsyncExchangeClient(target, token="t") as client:
        sub = client.subscribe(connect_timeout=0.5)
        with pytest.raises(Unavailable, match=r"no answer \(gave up after 0.5 s"):
            await asyncio.wait_for(anext(sub), 10)
        assert sub.closed


def test_connect_timeout_does_not_limit_an_established_stream(
    fake: tuple[str, FlakyExchange],
) -> None:
    """Once the first message arrived, a lost stream is retried past connect_timeout,
    telling on_reconnect, as without it."""
    target, servicer = fake
    servicer.streams = [
        Stream([batch(cursor="c0"), batch(1)], ending=UNAVAILABLE),
        *(Stream(ending=UNAVAILABLE) for _ in range(8)),
        Stream([batch(cursor="c1"), batch(2)]),
    ]
    time_ = FakeTime()
    calls: list[int] = []
    with time_.on(ExchangeClient(target, token="t")) as client:
        sub = client.subscribe(
            connect_timeout=1, max_backoff=5, on_reconnect=lambda n, _: calls.append(n)
        )
        assert [d.object_id for d in sub] == ["indicator--1", "indicator--2"]
    assert calls == list(range(1, 10))
    assert sum(time_.waits) > 1


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_connect_timeout_raises_authentication_errors_at_once(
    fake: tuple[str, FlakyExchange], flavour: str
) -> None:
    target, servicer = fake
    servicer.streams = [Stream(ending=grpc.StatusCode.UNAUTHENTICATED)]
    time_ = FakeTime()
    with pytest.raises(AuthenticationError):
        first_delivery(target, time_, flavour, connect_timeout=10)
    assert time_.waits == [] and len(servicer.requests) == 1


def test_connect_timeout_must_be_positive(fake: tuple[str, FlakyExchange]) -> None:
    target, _ = fake
    with ExchangeClient(target, token="t") as client, pytest.raises(ValueError, match="positive"):
        client.subscribe(connect_timeout=0)

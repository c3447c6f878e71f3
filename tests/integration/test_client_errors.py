"""Every failed call surfaces as one ExchangeError subclass, never a raw grpc.RpcError."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from exchange_client import (
    AuthenticationError,
    ExchangeClient,
    ExchangeError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
    ValidationError,
)
from exchange_client._errors import from_rpc_error

BUNDLE = {"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d", "objects": []}

CASES: list[tuple[grpc.StatusCode, type[ExchangeError]]] = [
    (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.INVALID_ARGUMENT, ValidationError),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimited),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, Unavailable),
    (grpc.StatusCode.INTERNAL, ExchangeError),
    (grpc.StatusCode.UNKNOWN, ExchangeError),
    (grpc.StatusCode.FAILED_PRECONDITION, ExchangeError),
    (grpc.StatusCode.UNIMPLEMENTED, ExchangeError),
]


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str | None, trailing: tuple[Any, ...] = ()
    ) -> None:
        super().__init__()
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing


@pytest.mark.parametrize(("code", "cls"), CASES)
def test_status_codes_map_to_the_tree(code: grpc.StatusCode, cls: type[ExchangeError]) -> None:
    error = from_rpc_error(FakeRpcError(code, "the exchange's one line"))
    assert type(error) is cls
    assert isinstance(error, ExchangeError)
    assert error.code == code.name
    assert error.details == "the exchange's one line"
    assert str(error) == "the exchange's one line"


def test_multi_line_details_become_one_line() -> None:
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "not JSON:\n line 1"))
    assert str(error) == "not JSON: line 1"


def test_missing_details_still_say_something() -> None:
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, None))
    assert "INTERNAL" in str(error)
    assert error.details == ""


@pytest.mark.parametrize(
    ("trailing", "expected"),
    [
        ((("retry-after", "2"),), 2.0),
        ((("retry-after", "0.5"),), 0.5),
        ((("Retry-After", b"3"),), 3.0),
        ((("retry-after", "tomorrow"),), None),
        ((("retry-after", "-1"),), None),
        ((("other", "1"),), None),
        ((), None),
    ],
)
def test_retry_after(trailing: tuple[Any, ...], expected: float | None) -> None:
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", trailing))
    assert isinstance(error, RateLimited)
    assert error.retry_after == expected


def test_errors_pickle() -> None:
    error = RateLimited("slow down", details="slow down", retry_after=1.5)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert (type(copy), str(copy), copy.code, copy.retry_after) == (
        RateLimited,
        "slow down",
        "RESOURCE_EXHAUSTED",
        1.5,
    )


# -- against a real gRPC server that fails every call ---------------------------------


class _Abort(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Fails every method of every service with one status, after an optional delay."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.delay = 0.0

    def _fail(self, context: grpc.ServicerContext) -> None:
        if self.delay:
            time.sleep(self.delay)
        context.set_trailing_metadata(self.trailing)
        context.abort(self.code, self.details)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._fail(context)
            return b""

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            self._fail(context)
            yield b""

        def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            next(requests, None)
            self._fail(context)
            yield b""

        if method.endswith("/Submit"):
            return grpc.unary_unary_rpc_method_handler(unary)
        if method.endswith("/Subscribe"):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.stream_stream_rpc_method_handler(bidi)


@pytest.fixture(scope="module")
def abort_server() -> Iterator[tuple[str, _Abort]]:
    handler = _Abort()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", handler
    server.stop(0)


def _calls(client: ExchangeClient) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("submit", lambda: client.submit(BUNDLE)),
        # Without reconnecting: only opening is retried, a few times, then it raises.
        (
            "subscribe",
            lambda: next(iter(client.subscribe(from_beginning=True, reconnect=False))),
        ),
        ("submit_stream", lambda: list(client.submit_stream([BUNDLE]))),
    ]


@pytest.mark.parametrize(("code", "cls"), CASES)
def test_real_calls_raise_the_mapped_error(
    abort_server: tuple[str, _Abort], code: grpc.StatusCode, cls: type[ExchangeError]
) -> None:
    target, handler = abort_server
    handler.code, handler.details = code, f"refused with {code.name}"
    handler.trailing = (("retry-after", "7"),)
    with ExchangeClient(target=target, token="t") as client:
        for name, call in _calls(client):
            with pytest.raises(cls) as caught:
                call()
            assert type(caught.value) is cls, name
            assert caught.value.code == code.name, name
            assert str(caught.value) == f"refused with {code.name}", name
            if cls is RateLimited:
                assert isinstance(caught.value, RateLimited)
                assert caught.value.retry_after == 7.0


def test_deadline_exceeded_is_unavailable(abort_server: tuple[str, _Abort]) -> None:
    target, handler = abort_server
    handler.code, handler.details, handler.delay = grpc.StatusCode.INTERNAL, "late", 1.0
    try:
        with ExchangeClient(target=target, token="t", timeout=0.1) as client:
            with pytest.raises(Unavailable) as caught:
                client.submit(BUNDLE)
            assert caught.value.code == "DEADLINE_EXCEEDED"
            # A per-call timeout overrides the client's.
            with pytest.raises(Unavailable):
                client.submit(BUNDLE, timeout=0.05)
    finally:
        handler.delay = 0.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_nobody_listening_is_unavailable() -> None:
    target = f"127.0.0.1:{_closed_port()}"
    with ExchangeClient(target=target, token="t", timeout=5) as client:
        for name, call in _calls(client):
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                call()
            assert caught.value.code == "UNAVAILABLE", name
            assert time.monotonic() - started < 5, name


def test_no_rpc_error_escapes_a_subscription_closed_from_another_thread(
    abort_server: tuple[str, _Abort],
) -> None:
    target, handler = abort_server
    handler.code, handler.details, handler.delay = grpc.StatusCode.INTERNAL, "late", 2.0
    try:
        with ExchangeClient(target=target, token="t") as client:
            subscription = client.subscribe()
            threading.Timer(0.2, subscription.close).start()
            assert list(subscription) == []
    finally:
        handler.delay = 0.0

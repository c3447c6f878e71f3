"""AsyncExchangeClient: the same calls as :class:`ExchangeClient`, on ``grpc.aio``.

Arguments, requests, responses, retry and reconnect decisions are the shared
ones (``_calls``, ``_retry``, ``_feed``, ``_batches``, ``_objects``); only the
I/O is asynchronous here.
"""

# The coroutines take ``timeout=`` like the blocking client's methods: it is the gRPC
# deadline sent with each call, not a local wait.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
import grpc.aio
from exchange_protocol.checkpoint import Checkpoint
from exchange_protocol.pb import audit_pb2 as audit_pb
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb.audit_pb2_grpc import AuditServiceStub
from exchange_protocol.pb.exchange_pb2_grpc import ExchangeServiceStub

from exchange_client import _calls
from exchange_client._batches import DEFAULT_BATCH_SIZE, ManySubmission, ProgressCallback
from exchange_client._bundle import BundleInput
from exchange_client._config import DEFAULT_TIMEOUT, ClientConfig, PathLike
from exchange_client._consistency import verify_consistency
from exchange_client._errors import ExchangeError, from_rpc_error
from exchange_client._feed import FeedState, Reconnect, ReconnectCallback
from exchange_client._models import (
    AuditEntry,
    Delivery,
    EraseResult,
    InclusionProof,
    PartnerKind,
    SubmitResult,
    SubmitSummary,
    VerifyResult,
)
from exchange_client._objects import make_bundle, revoked_version, sighting
from exchange_client._retry import Backoff, jitter, unary_retry

if TYPE_CHECKING:  # the async stubs exist in the type stubs only
    from exchange_protocol.pb.audit_pb2_grpc import AuditServiceAsyncStub
    from exchange_protocol.pb.exchange_pb2_grpc import ExchangeServiceAsyncStub

__all__ = ["AsyncExchangeClient", "AsyncSubscription"]

_Call = Any  # grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]
_OpenStream = Callable[[pb.SubscribeRequest, float | None], _Call]
_Sleep = Callable[[float], Awaitable[object]]


class _NotEstablished(Exception):
    """No first message within ``connect_timeout`` (a class of its own: grpc.aio
    could raise TimeoutError for reasons of its own)."""


class AsyncSubscription:
    """A live feed of :class:`Delivery` objects: ``async for delivery in subscription``.

    ``last_cursor`` is where to resume after everything handed out so far. Close
    it with :meth:`close` (or ``await aclose()``), or use ``async with``; closing
    the client closes it too. Reconnecting works as for :class:`Subscription`.
    """

    def __init__(self, open_stream: _OpenStream, state: FeedState, sleep: _Sleep | None) -> None:
        self._open = open_stream
        self._state = state
        self._sleep = sleep
        self._call: _Call | None = None
        self._responses: AsyncIterator[pb.SubscribeResponse] | None = None
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def last_cursor(self) -> str | None:
        return self._state.last_cursor

    @property
    def reconnects(self) -> int:
        """How many times the stream was reopened."""
        return self._state.reconnects

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancel the stream; iteration then ends. Safe to call twice."""
        self._closed = True
        self._state.clear()
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        """Same as :meth:`close`, as a coroutine (for ``contextlib.aclosing``)."""
        self.close()

    def cancel(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        delivery = await self._next()
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def _wait(self, delay: float) -> bool:
        """Wait ``delay`` seconds before reopening; False when closed meanwhile."""
        if delay <= 0:  # a resume the exchange asked for: at once
            return not self._closed
        if self._sleep is not None:
            await self._sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        return not self._closed

    async def _read(self, responses: AsyncIterator[pb.SubscribeResponse]) -> pb.SubscribeResponse:
        """The next message of the open stream; until a stream was established, the
        wait ends at ``connect_timeout`` (a server that accepts the connection and
        never answers must not hold the subscription)."""
        wait = self._state.first_message_wait()
        if wait is None:
            return await anext(responses)
        try:
            async with asyncio.timeout(wait):
                return await anext(responses)
        except TimeoutError:
            raise _NotEstablished from None

    async def _next(self) -> Delivery | None:
        state = self._state
        while True:
            delivery = state.take()
            if delivery is not None:
                return delivery
            if self._closed:
                return None
            if self._call is None or self._responses is None:
                self._call = self._open(state.begin_stream(), state.timeout())
                self._responses = aiter(self._call)
            try:
                response = await self._read(self._responses)
            except _NotEstablished:
                self.close()
                raise state.connect_failed() from None
            except StopAsyncIteration:
                self._closed = True
                return None
            except asyncio.CancelledError:
                if self._closed:  # close() cancelled the call under us
                    return None
                raise
            except grpc.RpcError as err:
                if self._closed:
                    return None
                self._call = self._responses = None
                try:
                    delay = state.after_failure(err)
                except ExchangeError as failure:
                    self._closed = True
                    raise failure from None
                if not await self._wait(delay):
                    return None
                continue
            state.receive(response)


class AsyncExchangeClient:
    """A connection to the exchange for asyncio code: the methods of
    :class:`ExchangeClient`, as coroutines (``subscribe``, ``submit_stream`` and
    ``audit_entries`` return async iterators).

    The constructor is the same (``target``, ``token``, ``timeout``, ``ca_file``,
    ``cert_file``, ``key_file``, ``options``, with the same ``EXCHANGE_*``
    defaults). The channel opens at the first call, on the running event loop.
    Use ``async with AsyncExchangeClient(...) as client``, or ``await client.close()``.
    """

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._config = ClientConfig.resolve(
            target,
            token,
            timeout=timeout,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            options=options,
        )
        self.target = self._config.target
        self.timeout = timeout
        self._metadata = self._config.metadata
        self._channel: grpc.aio.Channel | None = None
        self._exchange: ExchangeServiceAsyncStub | None = None
        self._audit_stub: AuditServiceAsyncStub | None = None
        self._subscriptions: weakref.WeakSet[AsyncSubscription] = weakref.WeakSet()
        self._closed = False
        # Seams for tests: how to wait, what time it is, the jitter.
        self._sleep: _Sleep | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._jitter: Callable[[], float] = jitter

    def __repr__(self) -> str:
        return f"AsyncExchangeClient(target={self.target!r})"

    # -- lifecycle -------------------------------------------------------

    def _open_channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise RuntimeError("this AsyncExchangeClient is closed")
        if self._channel is None:
            config = self._config
            if config.credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    config.target, config.credentials, options=config.options
                )
            else:
                self._channel = grpc.aio.insecure_channel(config.target, options=config.options)
            self._exchange = ExchangeServiceStub(self._channel)
            self._audit_stub = AuditServiceStub(self._channel)
        return self._channel

    @property
    def _stub(self) -> ExchangeServiceAsyncStub:
        self._open_channel()
        assert self._exchange is not None
        return self._exchange

    @property
    def _audit(self) -> AuditServiceAsyncStub:
        self._open_channel()
        assert self._audit_stub is not None
        return self._audit_stub

    async def close(self) -> None:
        """Cancel open subscriptions and streams and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        if self._channel is not None:
            await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncExchangeClient is closed")

    async def _pause(self, delay: float) -> None:
        await (self._sleep or asyncio.sleep)(delay)

    async def _unary(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        timeout: float | None,
        *,
        idempotent: bool = True,
    ) -> Any:
        """One unary call; an idempotent one is retried on ``UNAVAILABLE``."""
        self._check_open()
        deadline = self._config.deadline(timeout)
        if not idempotent:
            try:
                return await method(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as err:
                raise from_rpc_error(err, self.target) from None
        retry = unary_retry(deadline, clock=self._clock, random=self._jitter)
        while True:
            try:
                return await method(request, timeout=retry.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = retry.next_delay(err)
                if delay is None:
                    raise from_rpc_error(err, self.target) from None
            await self._pause(delay)

    # -- submitting ------------------------------------------------------

    async def submit(
        self,
        bundle: BundleInput,
        *,
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        exclude_kinds: Iterable[PartnerKind | str] | PartnerKind | str = (),
        timeout: float | None = None,
    ) -> SubmitResult:
        """See :meth:`ExchangeClient.submit`."""
        self._check_open()
        request = _calls.submit_request(bundle, communities, recipients, exclude_kinds)
        response = await self._unary(self._stub.Submit, request, timeout, idempotent=False)
        return SubmitResult._from_pb(response)

    def submit_stream(
        self,
        bundles: Iterable[BundleInput],
        *,
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        exclude_kinds: Iterable[PartnerKind | str] | PartnerKind | str = (),
        timeout: float | None = None,
    ) -> AsyncIterator[SubmitResult]:
        """See :meth:`ExchangeClient.submit_stream`: ``async for result in ...``."""
        self._check_open()
        requests = _calls.BundleRequests(bundles, communities, recipients, exclude_kinds)
        return self._stream_results(requests, timeout)

    async def _stream_results(
        self, requests: _calls.BundleRequests, timeout: float | None
    ) -> AsyncIterator[SubmitResult]:
        call = self._stub.SubmitStream(iter(requests), timeout=timeout, metadata=self._metadata)
        order = _calls.ResultOrder()
        try:
            async for response in call:
                for result in order.add(response):
                    yield result
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.target) from requests.error
        finally:
            call.cancel()
        order.finish(requests)

    async def submit_many(
        self,
        objects: Iterable[Any],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        exclude_kinds: Iterable[PartnerKind | str] | PartnerKind | str = (),
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> SubmitSummary:
        """See :meth:`ExchangeClient.submit_many`."""
        run = ManySubmission(objects, batch_size, on_progress)
        results = self.submit_stream(
            run.bundles(),
            communities=communities,
            recipients=recipients,
            exclude_kinds=exclude_kinds,
            timeout=timeout,
        )
        async for result in results:
            run.add(result)
        return run.summary()

    async def revoke(self, object_id: str, *, timeout: float | None = None) -> SubmitResult:
        """See :meth:`ExchangeClient.revoke`."""
        current = await self.get(object_id, timeout=timeout)
        bundle = make_bundle([revoked_version(current.object)])
        return await self.submit(bundle, timeout=timeout)

    async def erase(
        self, object_id: str, *, reason: str, timeout: float | None = None
    ) -> EraseResult:
        """See :meth:`ExchangeClient.erase`."""
        self._check_open()
        request = _calls.erase_request(object_id, reason)
        return EraseResult._from_pb(await self._unary(self._stub.Erase, request, timeout))

    async def report_sighting(
        self,
        indicator_id: str,
        *,
        count: int = 1,
        first_seen: datetime | str | None = None,
        last_seen: datetime | str | None = None,
        tlp: str = "amber",
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        description: str | None = None,
        timeout: float | None = None,
    ) -> SubmitResult:
        """See :meth:`ExchangeClient.report_sighting`."""
        obj = sighting(
            indicator_id,
            count=count,
            first_seen=first_seen,
            last_seen=last_seen,
            tlp=tlp,
            description=description,
        )
        return await self.submit(
            make_bundle([obj]), communities=communities, recipients=recipients, timeout=timeout
        )

    # -- reading ---------------------------------------------------------

    async def get(
        self, object_id: str, *, version: str | None = None, timeout: float | None = None
    ) -> Delivery:
        """See :meth:`ExchangeClient.get`."""
        self._check_open()
        request = _calls.get_request(object_id, version)
        response = await self._unary(self._stub.GetObject, request, timeout)
        return _calls.delivery_of(response, request)

    def subscribe(
        self,
        types: Iterable[str] | str | None = None,
        labels: Iterable[str] | str | None = None,
        cursor: str | None = None,
        from_beginning: bool = False,
        *,
        max_batch: int | None = None,
        reconnect: bool = True,
        max_backoff: float = 30.0,
        on_reconnect: ReconnectCallback | None = None,
        connect_timeout: float | None = None,
        timeout: float | None = None,
    ) -> AsyncSubscription:
        """See :meth:`ExchangeClient.subscribe`: ``async for delivery in client.subscribe()``.

        The stream opens at the first ``__anext__``."""
        self._check_open()
        request = _calls.subscribe_request(types, labels, cursor, from_beginning, max_batch)
        state = FeedState(
            request,
            target=self.target,
            reconnect=Reconnect(
                reconnect,
                Backoff(maximum=max_backoff, random=self._jitter),
                on_reconnect,
                connect_timeout,
            ),
            timeout=timeout,
            clock=self._clock,
        )

        def open_stream(request: pb.SubscribeRequest, timeout: float | None) -> _Call:
            return self._stub.Subscribe(request, timeout=timeout, metadata=self._metadata)

        subscription = AsyncSubscription(open_stream, state, self._sleep)
        self._subscriptions.add(subscription)
        return subscription

    # -- the audit log ---------------------------------------------------

    def audit_entries(
        self,
        *,
        partner: str | None = None,
        object_id: str | None = None,
        action: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
        with_proofs_at: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AuditEntry]:
        """See :meth:`ExchangeClient.audit_entries`: ``async for entry in ...``."""
        self._check_open()
        request = _calls.audit_entries_request(
            partner=partner,
            object_id=object_id,
            action=action,
            since=since,
            until=until,
            page_size=page_size,
            with_proofs_at=with_proofs_at,
        )
        return self._entries(request, timeout)

    async def _entries(
        self, request: audit_pb.QueryEntriesRequest, timeout: float | None
    ) -> AsyncIterator[AuditEntry]:
        retry = unary_retry(timeout, clock=self._clock, random=self._jitter)
        while True:
            call = self._audit.QueryEntries(
                request, timeout=retry.remaining(), metadata=self._metadata
            )
            received = False
            try:
                async for response in call:
                    received = True
                    for entry in response.entries:
                        yield AuditEntry._from_pb(entry)
                return
            except grpc.RpcError as err:
                # Retried only before the first page: the caller has seen nothing yet.
                delay = None if received else retry.next_delay(err)
                if delay is None:
                    raise from_rpc_error(err, self.target) from None
            finally:
                call.cancel()
            await self._pause(delay)

    async def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        """See :meth:`ExchangeClient.checkpoint`."""
        request = audit_pb.GetCheckpointRequest()
        return _calls.checkpoint_of(await self._unary(self._audit.GetCheckpoint, request, timeout))

    async def inclusion_proof(
        self, log_index: int, tree_size: int = 0, *, timeout: float | None = None
    ) -> InclusionProof:
        """See :meth:`ExchangeClient.inclusion_proof`."""
        request = _calls.inclusion_proof_request(log_index, tree_size)
        response = await self._unary(self._audit.GetInclusionProof, request, timeout)
        return InclusionProof._from_pb(response)

    async def consistency_proof(
        self, first: int, second: int, *, timeout: float | None = None
    ) -> list[bytes]:
        """See :meth:`ExchangeClient.consistency_proof`."""
        request = _calls.consistency_proof_request(first, second)
        response = await self._unary(self._audit.GetConsistencyProof, request, timeout)
        return list(response.hashes)

    async def check_consistency(
        self, kept: Checkpoint, public_key_pem: str | bytes, *, timeout: float | None = None
    ) -> Checkpoint:
        """See :meth:`ExchangeClient.check_consistency`."""
        latest = await self.checkpoint(timeout=timeout)
        proof: list[bytes] = []
        if 0 < kept.tree_size < latest.tree_size:
            proof = await self.consistency_proof(kept.tree_size, latest.tree_size, timeout=timeout)
        verify_consistency(kept, latest, proof, public_key_pem)
        return latest

    async def public_key(self, *, timeout: float | None = None) -> str:
        """See :meth:`ExchangeClient.public_key`."""
        request = audit_pb.GetPublicKeyRequest()
        response = await self._unary(self._audit.GetPublicKey, request, timeout)
        return str(response.public_key_pem)

    async def verify_log(
        self, start: int = 0, end: int = 0, *, timeout: float | None = None
    ) -> VerifyResult:
        """See :meth:`ExchangeClient.verify_log`."""
        request = _calls.verify_log_request(start, end)
        return VerifyResult._from_pb(await self._unary(self._audit.VerifyLog, request, timeout))

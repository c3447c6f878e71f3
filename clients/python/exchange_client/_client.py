"""ExchangeClient: one gRPC channel to the exchange, and the subscriptions it opened.

Only the blocking I/O lives here; arguments, requests, responses and retry
decisions come from the modules :class:`AsyncExchangeClient` shares.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import grpc
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

__all__ = ["ExchangeClient", "Subscription"]

_OpenStream = Callable[
    [pb.SubscribeRequest, float | None], "grpc.CallIterator[pb.SubscribeResponse]"
]


class Subscription:
    """A live feed of :class:`Delivery` objects; iterate it, close it when done.

    ``last_cursor`` is where to resume after everything handed out so far (or the
    cursor the subscription started from, or ``None``). Breaking out of a ``for``
    loop over the subscription, calling :meth:`close`, or closing the client
    cancels the stream.

    With ``reconnect=True`` (the default of :meth:`ExchangeClient.subscribe`), a
    stream lost to ``UNAVAILABLE`` (restart, network cut) is reopened from
    ``last_cursor`` after a backoff, so the caller sees neither gap nor repeat;
    ``reconnects`` counts how often.
    """

    def __init__(
        self,
        open_stream: _OpenStream,
        state: FeedState,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._open = open_stream
        self._state = state
        self._sleep = sleep
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        # The call cancelled for not being established within connect_timeout.
        self._expired: grpc.CallIterator[pb.SubscribeResponse] | None = None
        self._call = open_stream(state.begin_stream(), state.timeout())
        self._responses: Iterator[pb.SubscribeResponse] = iter(self._call)

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
        """Cancel the stream; iteration then ends. Safe to call twice, from any thread."""
        with self._lock:
            self._closed = True
            self._state.clear()
            self._wake.set()
            call = self._call
        call.cancel()  # type: ignore[no-untyped-call]

    def cancel(self) -> None:
        """Same as :meth:`close`."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Delivery]:
        # A generator, so that leaving a ``for`` loop early (break, exception)
        # closes it and, through ``finally``, cancels the stream.
        try:
            while (delivery := self._next()) is not None:
                yield delivery
        finally:
            self.close()

    def __next__(self) -> Delivery:
        delivery = self._next()
        if delivery is None:
            raise StopIteration
        return delivery

    def _wait(self, delay: float) -> bool:
        """Wait ``delay`` seconds before reopening; False when closed meanwhile."""
        if delay <= 0:  # a resume the exchange asked for: at once
            return not self._closed
        if self._sleep is not None:
            self._sleep(delay)
        else:
            self._wake.wait(delay)
        return not self._closed

    def _read(self) -> pb.SubscribeResponse:
        """The next message of the open stream. Until a stream was established, the
        wait ends at ``connect_timeout``: a blocking read has no timeout of its own,
        so a timer cancels the call (and marks it, to tell that from close())."""
        wait = self._state.first_message_wait()
        if wait is None:
            return next(self._responses)
        timer = threading.Timer(wait, self._expire, (self._call,))
        timer.daemon = True
        timer.start()
        try:
            return next(self._responses)
        finally:
            timer.cancel()

    def _expire(self, call: grpc.CallIterator[pb.SubscribeResponse]) -> None:
        with self._lock:
            if call is not self._call or self._closed:
                return
            self._expired = call
        call.cancel()  # type: ignore[no-untyped-call]

    def _next(self) -> Delivery | None:
        state = self._state
        while True:
            delivery = state.take()
            if delivery is not None:
                return delivery
            if self._closed:
                return None
            try:
                response = self._read()
            except StopIteration:
                self._closed = True
                return None
            except grpc.RpcError as err:
                if self._closed:  # cancelled by close(), possibly from another thread
                    return None
                try:
                    if self._expired is not self._call:
                        delay = state.after_failure(err)
                    elif not state.received:
                        raise state.connect_failed()
                    else:  # the first message came in just as the timer cancelled
                        delay = 0.0
                except ExchangeError as failure:
                    self._closed = True
                    raise failure from None
                if not self._wait(delay):
                    return None
                with self._lock:
                    if self._closed:
                        return None
                    self._call = self._open(state.begin_stream(), state.timeout())
                    self._responses = iter(self._call)
                continue
            state.receive(response)


class ExchangeClient:
    """A connection to the exchange.

    ``target`` (``host:port``) defaults to ``$EXCHANGE_TARGET`` or
    ``127.0.0.1:50051``; ``token`` to ``$EXCHANGE_TOKEN``. The channel is
    plaintext unless ``ca_file`` (or ``$EXCHANGE_CA_FILE``) names the PEM root
    certificates to verify the server with. ``timeout`` is the deadline in
    seconds of each unary call (``None``: no deadline); every call may override it.

    For mutual TLS, ``cert_file`` and ``key_file`` (or ``$EXCHANGE_CERT_FILE``
    and ``$EXCHANGE_KEY_FILE``) name the partner's PEM client certificate
    (chain) and private key; they need ``ca_file``. With a client certificate
    the token is optional: the exchange may know the partner by its certificate.
    Giving only one of the two, or a certificate without ``ca_file``, raises
    ``ValueError``; a file that cannot be read raises ``OSError``.

    Calls that may safely run twice (look-ups, opening a subscription, audit
    queries) are retried a few times within their deadline when the exchange is
    ``UNAVAILABLE``; submissions never are.

    Use it as a context manager, or call :meth:`close`.
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
        config = self._config
        if config.credentials is not None:
            self._channel = grpc.secure_channel(
                config.target, config.credentials, options=config.options
            )
        else:
            self._channel = grpc.insecure_channel(config.target, options=config.options)
        self._metadata = config.metadata
        self._stub = ExchangeServiceStub(self._channel)
        self._audit = AuditServiceStub(self._channel)
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        # Seams for tests: how to wait, what time it is, the jitter.
        self._sleep: Callable[[float], object] | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._jitter: Callable[[], float] = jitter

    def __repr__(self) -> str:
        return f"ExchangeClient(target={self.target!r})"

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Cancel open subscriptions and streams and close the channel. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ExchangeClient is closed")

    def _unary(
        self, method: Any, request: Any, timeout: float | None, *, idempotent: bool = True
    ) -> Any:
        """One unary call; an idempotent one is retried on ``UNAVAILABLE``."""
        self._check_open()
        deadline = self._config.deadline(timeout)
        if not idempotent:
            try:
                return method(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as err:
                raise from_rpc_error(err, self.target) from None
        retry = unary_retry(deadline, clock=self._clock, random=self._jitter)
        while True:
            try:
                return method(request, timeout=retry.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                delay = retry.next_delay(err)
                if delay is None:
                    raise from_rpc_error(err, self.target) from None
            (self._sleep or time.sleep)(delay)

    # -- submitting ------------------------------------------------------

    def submit(
        self,
        bundle: BundleInput,
        *,
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        exclude_kinds: Iterable[PartnerKind | str] | PartnerKind | str = (),
        timeout: float | None = None,
    ) -> SubmitResult:
        """Submit one STIX 2.1 bundle and return what happened to each object.

        ``bundle`` may be a dict, JSON text (``str``) or bytes, a file path
        (``pathlib.Path``; a ``str`` is always taken as JSON), a stix2 object,
        or a list of STIX objects (dicts or stix2 objects), sent wrapped in a new
        bundle. Objects the exchange refuses are listed in ``result.rejected``; a
        bundle refused as a whole raises :class:`ValidationError`.

        The audience narrows who receives the objects beyond their TLP:
        ``communities`` (community names) and ``recipients`` (partner ids) say
        who receives TLP:AMBER objects (default: the submitter's communities);
        TLP:AMBER+STRICT and TLP:RED objects go to ``recipients`` only.
        ``exclude_kinds`` (:class:`PartnerKind` values such as ``"government"``)
        keeps the objects from every partner of those kinds not named in
        ``recipients``. Each takes one string or an iterable of strings. An
        unknown kind raises ``ValueError`` before any call; an unknown community
        or partner id raises :class:`ValidationError`.

        A submission is never retried: if it fails with :class:`Unavailable`,
        submitting again is safe (what was stored comes back as duplicate).
        """
        self._check_open()
        request = _calls.submit_request(bundle, communities, recipients, exclude_kinds)
        response = self._unary(self._stub.Submit, request, timeout, idempotent=False)
        return SubmitResult._from_pb(response)

    def submit_stream(
        self,
        bundles: Iterable[BundleInput],
        *,
        communities: Iterable[str] | str = (),
        recipients: Iterable[str] | str = (),
        exclude_kinds: Iterable[PartnerKind | str] | PartnerKind | str = (),
        timeout: float | None = None,
    ) -> Iterator[SubmitResult]:
        """Submit many bundles on one stream; yield one result per bundle, in order.

        Bundles are read and encoded as the stream needs them. ``timeout`` bounds
        the whole stream (default: no deadline). A bundle refused as a whole (not
        JSON, too large...) does not end the stream: its result has ``error`` set
        and no object results. A bundle that cannot be read (e.g.
        ``FileNotFoundError``) is raised after the results of the bundles before
        it. Leaving the loop early cancels the stream.

        ``communities``, ``recipients`` and ``exclude_kinds`` (see :meth:`submit`)
        apply to every bundle of the stream; an unknown kind raises ``ValueError``
        here, before the stream opens.
        """
        self._check_open()
        requests = _calls.BundleRequests(bundles, communities, recipients, exclude_kinds)
        call = self._stub.SubmitStream(iter(requests), timeout=timeout, metadata=self._metadata)
        return self._stream_results(call, requests)

    def _stream_results(
        self,
        call: grpc.CallIterator[pb.SubmitStreamResponse],
        requests: _calls.BundleRequests,
    ) -> Iterator[SubmitResult]:
        order = _calls.ResultOrder()
        try:
            for response in call:
                yield from order.add(response)
        except grpc.RpcError as err:
            # The exchange's verdict comes first; an unreadable later bundle stays attached.
            raise from_rpc_error(err, self.target) from requests.error
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        order.finish(requests)

    def submit_many(
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
        """Submit any number of STIX objects (dicts or stix2 objects), ``batch_size``
        to a bundle, on one stream; return what happened to all of them.

        The objects are read as the stream needs them, so a generator over a huge
        export never sits in memory whole. After each batch the exchange answered,
        ``on_progress`` gets a :class:`SubmitProgress` (objects sent, answered,
        accepted, duplicates, rejected, and the total when ``objects`` has a
        length). A batch refused as a whole is in ``summary.errors`` with its
        number; the others go on. ``timeout`` bounds the whole stream (default:
        none). The audience arguments are those of :meth:`submit`, for every batch.
        Never retried (see :meth:`submit`).
        """
        run = ManySubmission(objects, batch_size, on_progress)
        for result in self.submit_stream(
            run.bundles(),
            communities=communities,
            recipients=recipients,
            exclude_kinds=exclude_kinds,
            timeout=timeout,
        ):
            run.add(result)
        return run.summary()

    def revoke(self, object_id: str, *, timeout: float | None = None) -> SubmitResult:
        """Withdraw one of your objects: submit its latest version again with
        ``"revoked": true`` and a later ``modified``, everything else kept.

        The new version keeps the widest audience of the earlier ones, so every
        partner that received the object receives the revocation. Only the
        object's creator may revoke it: for anyone else the result has the object
        in ``rejected``. An object you cannot see raises :class:`NotFound`.
        """
        current = self.get(object_id, timeout=timeout)
        bundle = make_bundle([revoked_version(current.object)])
        return self.submit(bundle, timeout=timeout)

    def erase(self, object_id: str, *, reason: str, timeout: float | None = None) -> EraseResult:
        """Erase one of your objects from the exchange, every version of it: the
        exchange removes it from its store and its Kafka topics, stops serving it
        (look-ups, replays, TAXII), and sends every subscriber that may have received
        it an erasure notice (``delivery.erased``) so that it deletes its copy.

        Use it when what you shared must not stay shared: it turned out to describe a
        victim (``reason="victim-data"``), an informant, or was wrong. ``reason`` is one
        of :data:`ERASE_REASONS` (a code, never free text: it travels to every
        recipient and stays in the audit log, which keeps that the object was shared
        and erased, never what it said). You may publish a new version later; the
        erased versions are never taken again.

        Only the object's creator may erase it (for an observable: your own copy):
        erasing another partner's object raises :class:`PermissionDenied`, and one
        you cannot see :class:`NotFound`. Erasing again returns the earlier erasure
        (``already_erased``). See docs/erasure.md for what erasure can and cannot
        reach (copies partners already made).
        """
        self._check_open()
        request = _calls.erase_request(object_id, reason)
        return EraseResult._from_pb(self._unary(self._stub.Erase, request, timeout))

    def report_sighting(
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
        """Tell the exchange you saw ``indicator_id`` (``count`` times, between
        ``first_seen`` and ``last_seen``: datetimes, naive meaning UTC, or ISO 8601
        text): submits a STIX 2.1 ``sighting`` marked ``tlp`` (``"clear"``,
        ``"green"``, ``"amber"``, ``"amber+strict"`` or ``"red"``).

        The exchange routes a sighting back to the creator of what it is a
        sighting of, whatever its TLP, as well as to its TLP's audience
        (narrowed by ``communities`` and ``recipients`` as in :meth:`submit`).
        ``result.accepted[0]`` is the sighting's id.
        """
        obj = sighting(
            indicator_id,
            count=count,
            first_seen=first_seen,
            last_seen=last_seen,
            tlp=tlp,
            description=description,
        )
        return self.submit(
            make_bundle([obj]), communities=communities, recipients=recipients, timeout=timeout
        )

    # -- reading ---------------------------------------------------------

    def get(
        self, object_id: str, *, version: str | None = None, timeout: float | None = None
    ) -> Delivery:
        """One object the caller may see, as a :class:`Delivery` (its ``cursor`` is empty).

        ``version`` (the object's ``modified`` timestamp, as the exchange reports
        it) picks an older version; by default the latest one is returned. An
        object that does not exist, or that the caller may not see, raises
        :class:`NotFound` (the exchange does not tell the two apart).
        """
        self._check_open()
        request = _calls.get_request(object_id, version)
        return _calls.delivery_of(self._unary(self._stub.GetObject, request, timeout), request)

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
    ) -> Subscription:
        """Stream the objects the caller may see, as :class:`Delivery` objects.

        Start from now (default), from the first object ever accepted
        (``from_beginning=True``), or right after a delivery (``cursor=``; e.g.
        ``subscription.last_cursor`` of an earlier subscription). ``types`` and
        ``labels`` narrow the feed (an object matches with any one of the labels).
        ``timeout`` bounds the whole stream (default: none; it runs until closed).

        With ``reconnect=True`` (default), a stream lost to ``UNAVAILABLE`` (the
        exchange restarting, a network cut, nobody listening yet) is reopened
        after an exponential backoff with full jitter (0.1 s doubling up to
        ``max_backoff``), resuming from ``last_cursor``: no gap, no repeat.
        ``on_reconnect(attempt, error)`` is called before each wait. Other
        errors (authentication, permission, a bad cursor...) are raised. With
        ``reconnect=False`` only opening the stream is retried, a few times.

        When the exchange itself ends the stream asking to resume (the partner's
        communities changed: ``UNAVAILABLE`` with the trailing metadata
        ``exchange-resume``), it is reopened at once from ``last_cursor``, without
        backoff and without ``on_reconnect`` (a ``logging`` debug line only); with
        ``reconnect=False`` it raises :class:`Unavailable` with
        ``resume_requested=True``.

        ``connect_timeout`` (seconds; default ``None``: no limit) bounds how long
        the *first* stream may take to be established (its first message, the
        start cursor, arrived): past it, :class:`Unavailable` is raised ("...
        gave up after N s"). Attempts within it are retried quietly, without
        ``on_reconnect``. Once established, a lost stream is reconnected as above,
        with no such limit.
        """
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

        def open_stream(
            request: pb.SubscribeRequest, timeout: float | None
        ) -> grpc.CallIterator[pb.SubscribeResponse]:
            return self._stub.Subscribe(request, timeout=timeout, metadata=self._metadata)

        subscription = Subscription(open_stream, state, self._sleep)
        with self._lock:
            closed = self._closed
            if not closed:
                self._subscriptions.add(subscription)
        if closed:  # the client was closed from another thread meanwhile
            subscription.close()
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
    ) -> Iterator[AuditEntry]:
        """The audit log entries you may read that match, oldest first (every
        argument is keyword-only).

        A partner with the ``audit`` role reads every entry; any other partner
        the entries of its own actions and those about the objects it submitted
        (who received what it shared). ``partner`` matches the actor or the
        partner concerned; ``action`` is e.g. ``"submit"`` or ``"deliver"``;
        ``since`` / ``until`` take a ``datetime`` (naive means UTC) or ISO 8601
        text. ``page_size`` (at most 1000) is how many entries each streamed
        message carries. With ``with_proofs_at=N`` only the entries of the log's
        first ``N`` (a checkpoint's ``tree_size``) are returned, each with its
        inclusion proof in that tree.

        The entries stream as you iterate (``timeout`` bounds the whole stream;
        default: none); leaving the loop early cancels the stream. Your query is
        itself recorded in the log.
        """
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

    def _entries(
        self, request: audit_pb.QueryEntriesRequest, timeout: float | None
    ) -> Iterator[AuditEntry]:
        retry = unary_retry(timeout, clock=self._clock, random=self._jitter)
        while True:
            call = self._audit.QueryEntries(
                request, timeout=retry.remaining(), metadata=self._metadata
            )
            received = False
            try:
                for response in call:
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
                call.cancel()  # type: ignore[no-untyped-call]
            (self._sleep or time.sleep)(delay)

    def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        """The latest signed checkpoint of the audit log (its size and Merkle root).

        Check its signature with ``checkpoint.verify(public_key_pem)`` (needs
        ``pip install 'exchange-client[verify]'``)."""
        request = audit_pb.GetCheckpointRequest()
        return _calls.checkpoint_of(self._unary(self._audit.GetCheckpoint, request, timeout))

    def inclusion_proof(
        self, log_index: int, tree_size: int = 0, *, timeout: float | None = None
    ) -> InclusionProof:
        """Proof that the entry at ``log_index`` is in the log's tree of ``tree_size``
        entries; with ``tree_size=0`` (default), in the latest checkpoint's tree, which
        comes with it (``proof.checkpoint``). Check it with :func:`verify_receipt`."""
        request = _calls.inclusion_proof_request(log_index, tree_size)
        response = self._unary(self._audit.GetInclusionProof, request, timeout)
        return InclusionProof._from_pb(response)

    def consistency_proof(
        self, first: int, second: int, *, timeout: float | None = None
    ) -> list[bytes]:
        """Proof that the log's tree of ``second`` entries extends that of ``first``
        (RFC 9162 section 2.1.4): nothing of the first was changed or removed. Check
        it with two signed checkpoints (:func:`verify_consistency`), or let
        :meth:`check_consistency` do both."""
        request = _calls.consistency_proof_request(first, second)
        response = self._unary(self._audit.GetConsistencyProof, request, timeout)
        return list(response.hashes)

    def check_consistency(
        self, kept: Checkpoint, public_key_pem: str | bytes, *, timeout: float | None = None
    ) -> Checkpoint:
        """The exchange's latest signed checkpoint, once proven to extend ``kept``, a
        checkpoint you kept (``Checkpoint.from_json(saved)``): the log still holds,
        unchanged, every entry ``kept`` signed. Raises :class:`ConsistencyError` when
        it does not (truncated, rewritten, or signed with another key than
        ``public_key_pem``, your copy of the exchange's key). Keep the checkpoint it
        returns for the next check (``.to_json()``)."""
        latest = self.checkpoint(timeout=timeout)
        proof: list[bytes] = []
        if 0 < kept.tree_size < latest.tree_size:
            proof = self.consistency_proof(kept.tree_size, latest.tree_size, timeout=timeout)
        verify_consistency(kept, latest, proof, public_key_pem)
        return latest

    def public_key(self, *, timeout: float | None = None) -> str:
        """The PEM (SubjectPublicKeyInfo) of the Ed25519 key the exchange signs
        checkpoints with. Keep a copy: a checkpoint is only as good as the key you
        check it with, so compare it with one obtained from the operator."""
        response = self._unary(self._audit.GetPublicKey, audit_pb.GetPublicKeyRequest(), timeout)
        return str(response.public_key_pem)

    def verify_log(
        self, start: int = 0, end: int = 0, *, timeout: float | None = None
    ) -> VerifyResult:
        """Have the exchange re-derive every hash of entries ``start`` to ``end - 1``
        (``end=0``: to the end) and check every checkpoint. Needs the ``audit`` role."""
        request = _calls.verify_log_request(start, end)
        return VerifyResult._from_pb(self._unary(self._audit.VerifyLog, request, timeout))

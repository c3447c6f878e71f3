"""ExchangeClient: one gRPC channel to the exchange, and the subscriptions it opened."""

from __future__ import annotations

import collections
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import grpc

from exchange_client._bundle import BundleInput, encode_bundle
from exchange_client._checkpoint import Checkpoint
from exchange_client._errors import ExchangeError, ValidationError, from_rpc_error
from exchange_client._models import (
    AuditEntry,
    Delivery,
    InclusionProof,
    PartnerKind,
    SubmitResult,
    VerifyResult,
    _audience,
    _checkpoint,
)
from exchange_client._pb import audit_pb2 as audit_pb
from exchange_client._pb import exchange_pb2 as pb
from exchange_client._pb.audit_pb2_grpc import AuditServiceStub
from exchange_client._pb.exchange_pb2_grpc import ExchangeServiceStub

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT", "ExchangeClient", "Subscription"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Room for the protobuf framing around the bundle bytes (tags, lengths, request id).
_FRAMING_BYTES = 1024


def _check_size(data: bytes) -> None:
    """Refuse, before sending, a bundle no gRPC message may carry."""
    if len(data) + _FRAMING_BYTES > MAX_MESSAGE_BYTES:
        message = (
            f"bundle is {len(data)} bytes; one message may carry at most "
            f"{MAX_MESSAGE_BYTES - _FRAMING_BYTES} bytes: split it into smaller bundles"
        )
        raise ValidationError(message, code="INVALID_ARGUMENT")


def _instant(value: datetime | str | None, name: str) -> datetime | None:
    """``since=`` / ``until=``: a datetime (naive means UTC) or ISO 8601 text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} must be a datetime or ISO 8601 text such as '2026-11-27' or"
                f" '2026-11-27T10:00:00Z', not {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or ISO 8601 text, not {type(value).__name__}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _count(value: int | None, name: str, minimum: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _strings(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


class Subscription:
    """A live feed of :class:`Delivery` objects; iterate it, close it when done.

    ``last_cursor`` is where to resume after everything handed out so far (or the
    cursor the subscription started from, or ``None``). Breaking out of a ``for``
    loop over the subscription, calling :meth:`close`, or closing the client
    cancels the stream.
    """

    def __init__(
        self, call: grpc.CallIterator[pb.SubscribeResponse], *, cursor: str | None
    ) -> None:
        self._call = call
        self._responses = iter(call)
        self._pending: collections.deque[Delivery] = collections.deque()
        self._batch_cursor = ""
        self._closed = False
        self.last_cursor: str | None = cursor

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancel the stream; iteration then ends. Safe to call twice, from any thread."""
        self._closed = True
        self._pending.clear()
        self._call.cancel()  # type: ignore[no-untyped-call]

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

    def _next(self) -> Delivery | None:
        while True:
            if self._pending:
                delivery = self._pending.popleft()
                if delivery.cursor:
                    self.last_cursor = delivery.cursor
                if not self._pending and self._batch_cursor:
                    # The batch cursor also covers objects read but filtered out after it.
                    self.last_cursor = self._batch_cursor
                return delivery
            if self._closed:
                return None
            try:
                response = next(self._responses)
            except StopIteration:
                self._closed = True
                return None
            except grpc.RpcError as err:
                if self._closed:  # cancelled by close(), possibly from another thread
                    return None
                self._closed = True
                raise from_rpc_error(err) from None
            self._batch_cursor = response.cursor
            self._pending.extend(Delivery._from_pb(d) for d in response.deliveries)
            if not self._pending and response.cursor:
                # A cursor-only message: nothing to deliver, but resume from here.
                self.last_cursor = response.cursor


def _read_pem(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _tls_files(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> tuple[
    str | os.PathLike[str] | None, str | os.PathLike[str] | None, str | os.PathLike[str] | None
]:
    """The CA, client certificate and key files to use (arguments, else environment), checked."""
    if ca_file is None:
        ca_file = os.environ.get("EXCHANGE_CA_FILE") or None
    if cert_file is None:
        cert_file = os.environ.get("EXCHANGE_CERT_FILE") or None
    if key_file is None:
        key_file = os.environ.get("EXCHANGE_KEY_FILE") or None
    if (cert_file is None) != (key_file is None):
        given, missing = (
            ("cert_file", "key_file") if key_file is None else ("key_file", "cert_file")
        )
        raise ValueError(
            f"a client certificate needs both cert_file and key_file "
            f"($EXCHANGE_CERT_FILE / $EXCHANGE_KEY_FILE): {given} is set but {missing} is not"
        )
    if cert_file is not None and ca_file is None:
        raise ValueError(
            "a client certificate needs TLS: set ca_file ($EXCHANGE_CA_FILE) to the PEM root "
            "certificates that verify the exchange"
        )
    return ca_file, cert_file, key_file


class _BundleRequests:
    """The request side of SubmitStream: encodes bundles lazily, remembers why it stopped.

    gRPC consumes this iterator on its own thread and swallows its exceptions, so a
    bundle that cannot be read or encoded ends the requests and is re-raised to
    the caller once the results of the bundles before it have been handed out.
    """

    def __init__(self, bundles: Iterable[BundleInput], audience: pb.Audience | None) -> None:
        self._bundles = bundles
        self._audience = audience
        self.sent = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pb.SubmitStreamRequest]:
        try:
            for bundle in self._bundles:
                data = encode_bundle(bundle)
                _check_size(data)
                yield pb.SubmitStreamRequest(
                    bundle=data, request_id=str(self.sent), audience=self._audience
                )
                self.sent += 1
        except Exception as err:
            self.error = err


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

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target or os.environ.get("EXCHANGE_TARGET") or DEFAULT_TARGET
        if token is None:
            token = os.environ.get("EXCHANGE_TOKEN", "")
        token = token.strip()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout = timeout
        ca_file, cert_file, key_file = _tls_files(ca_file, cert_file, key_file)
        channel_options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.primary_user_agent", "exchange-client-python"),
            *options,
        ]
        if ca_file is not None:
            roots = _read_pem(ca_file)
            private_key = certificate_chain = None
            if cert_file is not None and key_file is not None:
                certificate_chain = _read_pem(cert_file)
                private_key = _read_pem(key_file)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=roots,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            self._channel = grpc.secure_channel(self.target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=channel_options)
        self._stub = ExchangeServiceStub(self._channel)
        self._audit = AuditServiceStub(self._channel)
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

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

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    # -- calls -----------------------------------------------------------

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
        (``pathlib.Path``; a ``str`` is always taken as JSON), or a stix2 object.
        Objects the exchange refuses are listed in ``result.rejected``; a bundle
        refused as a whole raises :class:`ValidationError`.

        The audience narrows who receives the objects beyond their TLP:
        ``communities`` (community names) and ``recipients`` (partner ids) say
        who receives TLP:AMBER objects (default: the submitter's communities);
        TLP:AMBER+STRICT and TLP:RED objects go to ``recipients`` only.
        ``exclude_kinds`` (:class:`PartnerKind` values such as ``"government"``)
        keeps the objects from every partner of those kinds not named in
        ``recipients``. Each takes one string or an iterable of strings. An
        unknown kind raises ``ValueError`` before any call; an unknown community
        or partner id raises :class:`ValidationError`.
        """
        self._check_open()
        audience = _audience(communities, recipients, exclude_kinds)
        data = encode_bundle(bundle)
        _check_size(data)
        try:
            response = self._stub.Submit(
                pb.SubmitRequest(bundle=data, audience=audience),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
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
        requests = _BundleRequests(bundles, _audience(communities, recipients, exclude_kinds))
        call = self._stub.SubmitStream(iter(requests), timeout=timeout, metadata=self._metadata)
        return self._stream_results(call, requests)

    def _stream_results(
        self,
        call: grpc.CallIterator[pb.SubmitStreamResponse],
        requests: _BundleRequests,
    ) -> Iterator[SubmitResult]:
        done: dict[str, SubmitResult] = {}
        expected = 0
        try:
            for response in call:
                request_id = response.request_id or str(expected + len(done))
                done[request_id] = SubmitResult._from_pb(response.result, response.error)
                while str(expected) in done:
                    yield done.pop(str(expected))
                    expected += 1
        except grpc.RpcError as err:
            # The exchange's verdict comes first; an unreadable later bundle stays attached.
            raise from_rpc_error(err) from requests.error
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        if requests.error is not None:
            raise requests.error
        if done or expected != requests.sent:
            raise ExchangeError(
                f"the exchange answered {expected + len(done)} of {requests.sent} bundles "
                "on the stream, or answered them out of order",
                code="UNKNOWN",
            )

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
        if not isinstance(object_id, str) or not object_id.strip():
            raise ValueError("object_id must be a STIX id such as 'indicator--<uuid>'")
        request = pb.GetObjectRequest(object_id=object_id.strip(), version=version or "")
        try:
            response = self._stub.GetObject(
                request, timeout=self._deadline(timeout), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        if not response.HasField("delivery"):
            raise ExchangeError(
                f"the exchange answered the look-up of {request.object_id} without an object",
                code="UNKNOWN",
            )
        return Delivery._from_pb(response.delivery)

    def subscribe(
        self,
        types: Iterable[str] | str | None = None,
        labels: Iterable[str] | str | None = None,
        cursor: str | None = None,
        from_beginning: bool = False,
        *,
        max_batch: int | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Stream the objects the caller may see, as :class:`Delivery` objects.

        Start from now (default), from the first object ever accepted
        (``from_beginning=True``), or right after a delivery (``cursor=``; e.g.
        ``subscription.last_cursor`` of an earlier subscription). ``types`` and
        ``labels`` narrow the feed (an object matches with any one of the labels).
        ``timeout`` bounds the whole stream (default: none; it runs until closed).
        """
        self._check_open()
        if cursor and from_beginning:
            raise ValueError("pass either cursor= or from_beginning=True, not both")
        request = pb.SubscribeRequest(types=_strings(types), labels=_strings(labels))
        if cursor:
            request.cursor = cursor
        elif from_beginning:
            request.from_beginning = True
        if max_batch is not None:
            request.max_batch = max_batch
        call = self._stub.Subscribe(request, timeout=timeout, metadata=self._metadata)
        subscription = Subscription(call, cursor=cursor or None)
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
        request = audit_pb.QueryEntriesRequest(
            partner=(partner or "").strip(),
            object_id=(object_id or "").strip(),
            action=(action or "").strip(),
            page_size=_count(page_size, "page_size", 1),
            proof_tree_size=_count(with_proofs_at, "with_proofs_at", 1),
        )
        start, end = _instant(since, "since"), _instant(until, "until")
        if start is not None:
            request.since.FromDatetime(start)
        if end is not None:
            request.until.FromDatetime(end)
        if start is not None and end is not None and start > end:
            raise ValueError(f"since ({start.isoformat()}) is after until ({end.isoformat()})")
        call = self._audit.QueryEntries(request, timeout=timeout, metadata=self._metadata)
        return self._entries(call)

    @staticmethod
    def _entries(call: grpc.CallIterator[audit_pb.QueryEntriesResponse]) -> Iterator[AuditEntry]:
        try:
            for response in call:
                for entry in response.entries:
                    yield AuditEntry._from_pb(entry)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        self._check_open()
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def checkpoint(self, *, timeout: float | None = None) -> Checkpoint:
        """The latest signed checkpoint of the audit log (its size and Merkle root).

        Check its signature with ``checkpoint.verify(public_key_pem)`` (needs
        ``pip install 'exchange-client[verify]'``)."""
        response = self._unary(self._audit.GetCheckpoint, audit_pb.GetCheckpointRequest(), timeout)
        if not response.HasField("checkpoint"):
            raise ExchangeError("the exchange answered without a checkpoint", code="UNKNOWN")
        return _checkpoint(response.checkpoint)

    def inclusion_proof(
        self, log_index: int, tree_size: int = 0, *, timeout: float | None = None
    ) -> InclusionProof:
        """Proof that the entry at ``log_index`` is in the log's tree of ``tree_size``
        entries; with ``tree_size=0`` (default), in the latest checkpoint's tree, which
        comes with it (``proof.checkpoint``). Check it with :func:`verify_receipt`."""
        request = audit_pb.GetInclusionProofRequest(
            log_index=_count(log_index, "log_index", 0),
            tree_size=_count(tree_size, "tree_size", 0),
        )
        response = self._unary(self._audit.GetInclusionProof, request, timeout)
        return InclusionProof._from_pb(response)

    def consistency_proof(
        self, first: int, second: int, *, timeout: float | None = None
    ) -> list[bytes]:
        """Proof that the log's tree of ``second`` entries extends that of ``first``
        (RFC 9162 section 2.1.4): nothing of the first was changed or removed. Check
        it with two checkpoints' roots (``exchange_client._merkle.verify_consistency``)."""
        first, second = _count(first, "first", 1), _count(second, "second", 1)
        if first > second:
            raise ValueError(f"first ({first}) must not be larger than second ({second})")
        request = audit_pb.GetConsistencyProofRequest(
            first_tree_size=first, second_tree_size=second
        )
        response = self._unary(self._audit.GetConsistencyProof, request, timeout)
        return list(response.hashes)

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
        start, end = _count(start, "start", 0), _count(end, "end", 0)
        if end and start >= end:
            raise ValueError(f"start ({start}) must be smaller than end ({end})")
        request = audit_pb.VerifyLogRequest(start=start, end=end)
        return VerifyResult._from_pb(self._unary(self._audit.VerifyLog, request, timeout))

"""The TAXII 2.1 HTTP server: an aiohttp application on the exchange's own event loop,
with one middleware that negotiates media types, maps every error to a TAXII error
resource and logs one line per request (as the gRPC call log does)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from exchange.audit.recorder import AuditRecorder
from exchange.auth import Authenticator
from exchange.config import TlsSettings, parse_listen
from exchange.errors import ExchangeError, Unavailable
from exchange.ingest import Ingest
from exchange.logs import PARTNER_ID, REQUEST_ID
from exchange.metrics import Metrics
from exchange.quota import PartnerQuota
from exchange.store import Store
from exchange.taxii._errors import AUTHENTICATE, TaxiiError, error_body, taxii_error_of, title_of
from exchange.taxii._media import check_accept
from exchange.taxii._routes import Handlers, taxii_response
from exchange.taxii._status import Statuses

__all__ = ["MAX_HEADER_BYTES", "TaxiiServer"]

log = logging.getLogger("exchange.taxii")

# A request line or one header field longer than this is refused by the HTTP parser
# (far above any TAXII URL with its match[] filters, or a Basic credential).
MAX_HEADER_BYTES = 16 * 1024
# An idle connection (no request in progress) is closed after this long.
_IDLE_CLOSE_S = 15.0
# Room for the envelope around the largest bundle the exchange takes.
_BODY_SLACK = 64 * 1024

_MAX_BODY = web.AppKey("max_body", int)
_METRICS = web.AppKey("metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(error: TaxiiError) -> web.Response:
    headers = {"WWW-Authenticate": AUTHENTICATE} if error.status == 401 else None
    return taxii_response(error_body(error), error.status, headers)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    REQUEST_ID.set(uuid.uuid4().hex[:16])
    PARTNER_ID.set(None)
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        check_accept(request.headers.get("Accept"))
        response = await handler(request)
    except TaxiiError as exc:
        response = _error_response(exc)
    except ExchangeError as exc:
        response = _error_response(taxii_error_of(exc))
    except web.HTTPException as exc:
        # aiohttp's own refusals (no such route or method, a body over the limit).
        text = exc.text or exc.reason
        if exc.status == 413:
            text = (
                f"the request body is over the {request.app[_MAX_BODY]:,} bytes this server takes"
            )
        response = _error_response(TaxiiError(exc.status, title_of(exc.status), text))
        if "Allow" in exc.headers:  # a 405 says which methods the path takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("taxii: %s %s failed", request.method, request.path)
        response = _error_response(
            TaxiiError(500, title_of(500), "the exchange failed to answer; the error is logged")
        )
    seconds = time.perf_counter() - started
    # The route's pattern, never the path: ids in paths would make labels unbounded.
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[_METRICS]
    metrics.taxii_requests.labels(request.method, route, str(response.status)).inc()
    metrics.taxii_duration.labels(request.method, route).observe(seconds)
    log.info(
        "taxii %s %s %d %.1f ms", request.method, request.path, response.status, seconds * 1000
    )
    return response


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp names itself and its version; the exchange says nothing about its stack.
    response.headers.popall("Server", None)


class _TaxiiRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser refuses (a header
    or request line over MAX_HEADER_BYTES, a malformed request) with a TAXII error
    resource instead of its plain text: those never reach the middleware."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if not isinstance(manager, _TaxiiHttpServer):
            return
        over = manager.over_limit(transport)
        if over:
            # Closed before anything is read from it (said once a minute at most: a
            # flood must not flood the log too).
            now = time.monotonic()
            if now - manager.warned_at >= 60.0:
                manager.warned_at = now
                log.warning("taxii: %s; closing new connections", over)
            self.force_close()
            transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer went out already: aiohttp closes the connection.
            return super().handle_error(request, status, exc, message)
        if status == 500:
            log.error("taxii: a request from %s failed", request.remote, exc_info=exc)
            text = "the exchange failed to answer; the error is logged"
        elif status == 400 and "bytes when reading" in str(exc or message):
            status, text = (
                431,
                f"a request line or header field is over the {MAX_HEADER_BYTES:,} bytes"
                " this server takes",
            )
        else:
            # Not aiohttp's words: they quote the request, credentials included.
            text = "the request is not valid HTTP/1.1 (its request line or a header is malformed)"
        if status != 500:
            # A client's mistake (or probe): one line, not a traceback per request.
            log.info("taxii: refused a request from %s: %d %s", request.remote, status, text)
        response = _error_response(TaxiiError(status, title_of(status), text))
        # Outside the application, no on_response_prepare: aiohttp would name itself.
        response.headers["Server"] = "exchange"
        response.force_close()  # the connection's state is unknown after a parse error
        return response


class _TaxiiHttpServer(web.Server):
    # taxii.max_connections and max_connections_per_address, set by TaxiiServer.start.
    max_connections = 1000
    per_address = 100
    warned_at = -60.0  # when it last said it closed a connection over a limit

    def over_limit(self, transport: asyncio.BaseTransport) -> str:
        """Which limit a connection just made is over ("" when none)."""
        connections = self.connections
        if len(connections) > self.max_connections:
            return f"{self.max_connections} connections open (taxii.max_connections)"
        if self.per_address > 0:
            peer = _address(transport)
            mine = sum(1 for c in connections if _address(c.transport) == peer)
            if mine > self.per_address:
                return (
                    f"{self.per_address} connections open from {peer}"
                    " (taxii.max_connections_per_address)"
                )
        return ""

    def __call__(self) -> web.RequestHandler:
        return _TaxiiRequestHandler(self, loop=self._loop, **self._kwargs)


def _address(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def _ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """TLS and mutual TLS from the settings gRPC uses."""
    if not tls.cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            context.load_verify_locations(tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except OSError as exc:
        raise Unavailable(f"TAXII cannot read its TLS files: {exc}") from exc
    return context


class TaxiiServer:
    """TAXII 2.1 beside gRPC, in the same process and on the same event loop."""

    def __init__(
        self,
        listen: str,
        *,
        auth: Authenticator,
        ingest: Ingest,
        store: Store,
        recorder: AuditRecorder,
        calls: PartnerQuota,
        submissions: PartnerQuota,
        metrics: Metrics,
        tls: TlsSettings,
        max_bundle_bytes: int,
        max_connections: int = 1000,
        max_connections_per_address: int = 100,
        shutdown_grace_s: float = 10.0,
    ) -> None:
        self.listen = listen
        self._grace_s = shutdown_grace_s
        self._tls = tls
        max_body = max_bundle_bytes + _BODY_SLACK
        self.app = web.Application(middlewares=[_guard], client_max_size=max_body)
        self.app[_MAX_BODY] = max_body
        self.app[_METRICS] = metrics
        self.app.on_response_prepare.append(_no_server_header)
        handlers = Handlers(auth, ingest, store, recorder, Statuses(), max_body, calls, submissions)
        self.app.add_routes(handlers.routes())
        self._max_connections = max_connections
        self._per_address = max_connections_per_address
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        host, port = parse_listen(self.listen, "taxii.listen")
        runner = web.AppRunner(
            self.app,
            access_log=None,  # the middleware logs each request, as the gRPC call log does
            handle_signals=False,
            # In-flight requests get the grace gRPC calls get on shutdown.
            shutdown_timeout=self._grace_s,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            # A connection with no request in progress (idle, or still sending its
            # headers) is closed after this long; aiohttp's own default is an hour.
            keepalive_timeout=_IDLE_CLOSE_S,
        )
        await runner.setup()
        # Its connections answer parse errors as TAXII does (_TaxiiRequestHandler).
        assert runner.server is not None
        runner.server.__class__ = _TaxiiHttpServer
        runner.server.max_connections = self._max_connections  # type: ignore[attr-defined]
        runner.server.per_address = self._per_address  # type: ignore[attr-defined]
        site = web.TCPSite(runner, host, port, ssl_context=_ssl_context(self._tls))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise Unavailable(
                f"TAXII cannot listen on {self.listen}: {exc.strerror}; choose another with"
                " --taxii-listen HOST:PORT (or EXCHANGE_TAXII_LISTEN)"
            ) from exc
        self._runner = runner
        # Port 0 picks a free one: the bound address says which.
        self.port = int(runner.addresses[0][1]) if runner.addresses else port
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

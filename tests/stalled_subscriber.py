"""A Subscribe call whose client stops opening its HTTP/2 flow-control window.

It speaks HTTP/2 itself (h2 over a plain socket, in a thread): it sends the request,
answers the server's pings and settings (h2 does that by itself), and sends no
WINDOW_UPDATE, so after the first 64 KiB the server cannot send it anything more. A
gRPC client cannot be made to do this (it opens its window as it buffers), but a
hostile or wedged one can: this is what "a stalled subscriber" means in the tests.
``resume()`` makes it read again, as a client back from a long pause would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from exchange_protocol.pb import exchange_pb2

__all__ = ["StalledSubscriber"]

# The smallest window HTTP/2 starts with (RFC 9113 section 6.9.2): the server can send
# this much on the stream (and the connection), then must wait for a WINDOW_UPDATE.
_WINDOW = 65_535


class StalledSubscriber:
    """One Subscribe call on its own connection to ``target`` ("host:port")."""

    def __init__(self, target: str, token: str, request: exchange_pb2.SubscribeRequest) -> None:
        host, port = target.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        self._sock.settimeout(None)
        self._lock = threading.Lock()  # the h2 state machine is not thread-safe
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self._conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW}
        )
        self._conn.initiate_connection()
        self._stream = self._conn.get_next_available_stream_id()
        self._conn.send_headers(
            self._stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/exchange.v1.ExchangeService/Subscribe"),
                (":authority", target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("authorization", f"Bearer {token}"),
            ],
        )
        body = request.SerializeToString()
        self._conn.send_data(
            self._stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True
        )
        self._sock.sendall(self._conn.data_to_send())
        self._body = bytearray()  # the response body so far (length-prefixed messages)
        self._unacknowledged = 0  # flow-controlled bytes received and not acknowledged
        self._reading = False
        self.status: int | None = None  # grpc-status, once the call ended
        self.message = ""  # grpc-message
        self.reset = False  # the server reset the stream (or closed the connection)
        self._thread = threading.Thread(target=self._run, name="stalled-subscriber", daemon=True)
        self._thread.start()

    @property
    def ended(self) -> bool:
        with self._lock:
            return self.status is not None or self.reset

    @property
    def received(self) -> int:
        """Bytes of the response body that arrived."""
        with self._lock:
            return len(self._body)

    def responses(self) -> list[exchange_pb2.SubscribeResponse]:
        """The complete messages received so far."""
        with self._lock:
            body = bytes(self._body)
        out: list[exchange_pb2.SubscribeResponse] = []
        at = 0
        while at + 5 <= len(body):
            size = int.from_bytes(body[at + 1 : at + 5], "big")
            if at + 5 + size > len(body):
                break
            out.append(exchange_pb2.SubscribeResponse.FromString(body[at + 5 : at + 5 + size]))
            at += 5 + size
        return out

    def resume(self) -> None:
        """Read again: open the window for what arrived, and for all that follows."""
        with self._lock:
            self._reading = True
            self._acknowledge()

    def close(self) -> None:
        """Close the connection (the server then ends the call for good)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while data := self._sock.recv(65_536):
                with self._lock:
                    for event in self._conn.receive_data(data):
                        self._on(event)
                    if self._reading:
                        self._acknowledge()
                    # Otherwise ping and settings acknowledgements only: no WINDOW_UPDATE.
                    if out := self._conn.data_to_send():
                        self._sock.sendall(out)
        except (OSError, h2.exceptions.ProtocolError):
            pass
        with self._lock:
            if self.status is None:
                self.reset = True

    def _acknowledge(self) -> None:
        if self._unacknowledged and self.status is None and not self.reset:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.acknowledge_received_data(self._unacknowledged, self._stream)
            self._unacknowledged = 0
        if out := self._conn.data_to_send():
            with contextlib.suppress(OSError):
                self._sock.sendall(out)

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._body += event.data or b""
            self._unacknowledged += event.flow_controlled_length or 0
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers = dict(event.headers or ())
            if b"grpc-status" in headers:
                self.status = int(headers[b"grpc-status"])
                # Percent-encoded (gRPC over HTTP/2, "Responses").
                self.message = unquote(headers.get(b"grpc-message", b"").decode())
        elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
            self.reset = True

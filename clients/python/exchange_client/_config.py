"""Where and how to connect: arguments first, then ``EXCHANGE_*`` environment variables.

Shared by :class:`ExchangeClient` and :class:`AsyncExchangeClient`; only the
channel constructor (``grpc`` or ``grpc.aio``) differs between them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT", "MAX_MESSAGE_BYTES", "ClientConfig"]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

PathLike = str | os.PathLike[str]

# How fast the channel itself reconnects after losing the exchange: gRPC's default
# backs off up to two minutes, far longer than a restart takes. Each client keeps
# its own connections: by default gRPC shares them process-wide, so a new client
# would inherit the "connection refused" (and the wait) of an old one.
_CHANNEL_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.primary_user_agent", "exchange-client-python"),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


def _read_pem(path: PathLike) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _tls_files(
    ca_file: PathLike | None, cert_file: PathLike | None, key_file: PathLike | None
) -> tuple[PathLike | None, PathLike | None, PathLike | None]:
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


def _channel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The SDK's channel options, each replaced by the caller's option of the same name."""
    given = {name for name, _ in options}
    return [(n, v) for n, v in _CHANNEL_DEFAULTS if n not in given] + list(options)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a client needs to open its channel and authenticate its calls."""

    target: str
    metadata: tuple[tuple[str, str], ...]
    timeout: float | None
    credentials: grpc.ChannelCredentials | None
    options: list[tuple[str, Any]]

    @classmethod
    def resolve(
        cls,
        target: str | None,
        token: str | None,
        *,
        timeout: float | None,
        ca_file: PathLike | None,
        cert_file: PathLike | None,
        key_file: PathLike | None,
        options: Sequence[tuple[str, Any]],
    ) -> ClientConfig:
        """Arguments, else ``EXCHANGE_TARGET`` / ``EXCHANGE_TOKEN`` / ``EXCHANGE_CA_FILE`` /
        ``EXCHANGE_CERT_FILE`` / ``EXCHANGE_KEY_FILE``. Reads the PEM files now, so a
        missing one raises ``OSError`` here rather than at the first call."""
        target = (target or os.environ.get("EXCHANGE_TARGET") or DEFAULT_TARGET).strip()
        if token is None:
            token = os.environ.get("EXCHANGE_TOKEN", "")
        token = token.strip()
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout}")
        ca, cert, key = _tls_files(ca_file, cert_file, key_file)
        credentials = None
        if ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(ca),
                private_key=_read_pem(key) if key is not None else None,
                certificate_chain=_read_pem(cert) if cert is not None else None,
            )
        return cls(target, metadata, timeout, credentials, _channel_options(options))

    def deadline(self, timeout: float | None) -> float | None:
        """The deadline of one call: its own ``timeout=``, else the client's."""
        return self.timeout if timeout is None else timeout

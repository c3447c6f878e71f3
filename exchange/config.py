"""Settings: one typed, frozen object built from defaults, a TOML file, the
``EXCHANGE_*`` environment and command-line overrides, in that order.

Every field of a section is also an environment variable named
``EXCHANGE_<SECTION>_<FIELD>`` (top-level fields: ``EXCHANGE_<FIELD>``), e.g.
``EXCHANGE_DATA_DIR``, ``EXCHANGE_KAFKA_BOOTSTRAP``, ``EXCHANGE_LIMITS_MAX_OBJECTS``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from exchange.errors import InvalidArgument
from exchange.model import Tlp

__all__ = ["AuditSettings", "KafkaSettings", "Limits", "Settings", "TlsSettings", "load_settings"]

ENV_PREFIX = "EXCHANGE_"


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one submission may contain; larger input is refused, never half-processed."""

    max_bundle_bytes: int = 16 * 1024 * 1024
    max_objects: int = 10_000
    max_string_length: int = 100_000
    max_depth: int = 32


class KafkaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Kafka bus. Empty ``bootstrap`` selects the embedded in-process bus."""

    bootstrap: str = ""
    partitions: int = 3
    replication_factor: int = 1
    # Apache Kafka supports the idempotent producer; the Tansu test broker does not.
    enable_idempotence: bool = True
    # Low fetch wait keeps submit-to-subscriber latency in milliseconds (default 500 ms).
    fetch_max_wait_ms: int = 10
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""


class SubscriptionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_open: int = 1000
    max_batch: int = 500
    # Records the shared live tail keeps in memory; a stream further behind reads
    # with a reader of its own until it catches up.
    tail_window: int = 50_000


class RelaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    batch_size: int = 1000
    # Rows written by another process (the CLI, a replica) are picked up at least this often.
    poll_interval_s: float = 0.5


class TlsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """gRPC over TLS. With ``client_ca_file``, every client must present a certificate
    signed by that CA (mutual TLS); a certificate bound to a partner
    (``exchange token bind-cert``) then signs the partner in without a token."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""


class AuditSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The audit log's checkpoints and signing key."""

    # Ed25519 key that signs checkpoints; created on first start. Empty: in the data
    # directory (audit-signing-key.pem). Keep a copy of its public key elsewhere.
    signing_key_file: str = ""
    # Names this log in every checkpoint (e.g. the operator's domain).
    origin: str = "trafficking-indicator-exchange"
    # A new checkpoint is signed this often when the log has grown.
    checkpoint_interval_s: float = 10.0


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: str = "./exchange-data"
    listen: str = "127.0.0.1:50051"
    default_tlp: Tlp = Tlp.AMBER
    topic_prefix: str = "tix"
    # Processes used to validate large bundles; 0 means one per core.
    validation_workers: int = 0
    limits: Limits = msgspec.field(default_factory=Limits)
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    subscriptions: SubscriptionSettings = msgspec.field(default_factory=SubscriptionSettings)
    relay: RelaySettings = msgspec.field(default_factory=RelaySettings)
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def signing_key_path(self) -> Path:
        return Path(self.audit.signing_key_file or self.data_path / "audit-signing-key.pem")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ftype in _fields(Settings):
        if isinstance(ftype, type) and issubclass(ftype, msgspec.Struct):
            section: dict[str, Any] = {}
            for sub, _ in _fields(ftype):
                key = f"{ENV_PREFIX}{name}_{sub}".upper()
                if key in environ:
                    section[sub] = environ[key]
            if section:
                out[name] = section
        elif (key := f"{ENV_PREFIX}{name}".upper()) in environ:
            out[name] = environ[key]
    return out


def _fields(struct: type[msgspec.Struct]) -> list[tuple[str, Any]]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    result: list[tuple[str, Any]] = []
    for f in info.fields:
        t = f.type
        result.append((f.name, t.cls if isinstance(t, msgspec.inspect.StructType) else None))
    return result


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings; raise InvalidArgument naming the bad file, key or value."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    raw: dict[str, Any] = {}
    if config_file:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise InvalidArgument(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"config file {config_file} is not valid TOML: {exc}") from exc
    raw = _merge(raw, _env_overrides(environ))
    raw = _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        source = f" (file {config_file} or EXCHANGE_* environment)" if config_file else ""
        raise InvalidArgument(f"invalid setting{source}: {exc}") from exc
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    limits = s.limits
    for name in ("max_bundle_bytes", "max_objects", "max_string_length", "max_depth"):
        if getattr(limits, name) <= 0:
            raise InvalidArgument(f"limits.{name} must be a positive number")
    if not s.topic_prefix or not all(c.isalnum() or c in "._-" for c in s.topic_prefix):
        raise InvalidArgument("topic_prefix may hold only letters, digits, '.', '_' and '-'")
    if bool(s.tls.cert_file) != bool(s.tls.key_file):
        raise InvalidArgument("tls.cert_file and tls.key_file go together: set both or neither")
    if s.tls.client_ca_file and not s.tls.cert_file:
        raise InvalidArgument(
            "tls.client_ca_file (mutual TLS) needs the server's own tls.cert_file and key_file"
        )
    if not s.audit.origin or "\n" in s.audit.origin:
        raise InvalidArgument("audit.origin must be one non-empty line")
    if s.audit.checkpoint_interval_s <= 0:
        raise InvalidArgument("audit.checkpoint_interval_s must be a positive number of seconds")
    if s.validation_workers < 0:
        raise InvalidArgument("validation_workers must be 0 (one per core) or more")

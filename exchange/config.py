"""Settings: one typed, frozen object built from defaults, a TOML file, the
``EXCHANGE_*`` environment and command-line overrides, in that order.

Every field of a section is also an environment variable named
``EXCHANGE_<SECTION>_<FIELD>`` (top-level fields: ``EXCHANGE_<FIELD>``), e.g.
``EXCHANGE_DATA_DIR``, ``EXCHANGE_KAFKA_BOOTSTRAP``, ``EXCHANGE_LIMITS_MAX_OBJECTS``.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from exchange.errors import InvalidArgument
from exchange.model import Tlp

__all__ = [
    "RECORD_HEADROOM_BYTES",
    "AuditSettings",
    "KafkaSettings",
    "Limits",
    "LoggingSettings",
    "MetricsSettings",
    "PostgresSettings",
    "RetentionSettings",
    "Settings",
    "SubscriptionSettings",
    "TaxiiSettings",
    "TlsSettings",
    "effective_settings",
    "load_settings",
    "mask_url",
    "parse_listen",
]

ENV_PREFIX = "EXCHANGE_"


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one submission may contain, and how much one partner may ask of the
    exchange at once. Larger input is refused with the limit named, never
    half-processed; every limit protects the other partners (docs/security.md)."""

    max_bundle_bytes: int = 16 * 1024 * 1024
    max_objects: int = 10_000
    max_string_length: int = 100_000
    max_depth: int = 32
    # One object as stored and published (compact JSON). Kafka refuses records over its
    # message.max.bytes (1 MiB by default): kafka.max_record_bytes must leave room for this
    # plus the record's key and headers.
    max_object_bytes: int = 1_000_000
    # A STIX pattern's cost: its length in characters, its comparison expressions
    # ([type:path op value] terms, IN lists counted once), and how deep its brackets
    # and parentheses nest. Patterns past them are refused before they are parsed.
    max_pattern_length: int = 4_096
    max_pattern_comparisons: int = 64
    max_pattern_depth: int = 16
    # JSON objects and arrays within one STIX object (each external reference, kill
    # chain phase, extension...): checking each costs ~0.2 ms, so this bounds the time
    # one object holds a core.
    max_json_containers: int = 1_000
    # Communities plus recipients one submission's audience may name.
    max_audience_names: int = 200
    # One partner's Submit and SubmitStream calls in progress (counted before their
    # bundles are read), and the bytes of its bundles being validated and stored at once;
    # more are refused with RESOURCE_EXHAUSTED.
    max_submissions_per_partner: int = 8
    # Of those, how many have their bundles read and processed at once; the others wait
    # their turn, unread (a waiting call holds next to nothing).
    submissions_at_once_per_partner: int = 2
    max_submission_bytes_per_partner: int = 32 * 1024 * 1024
    # Other calls of one partner in progress at once (look-ups, audit queries, admin calls).
    max_calls_per_partner: int = 32


class KafkaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The Kafka bus. Empty ``bootstrap`` selects the embedded in-process bus."""

    bootstrap: str = ""
    partitions: int = 3
    replication_factor: int = 1
    # Apache Kafka supports the idempotent producer; the Tansu test broker does not.
    enable_idempotence: bool = True
    # Low fetch wait keeps submit-to-subscriber latency in milliseconds (default 500 ms).
    fetch_max_wait_ms: int = 10
    # The largest record the exchange produces (value, key and headers): the producer's
    # max_request_size. Keep it at or below the brokers' message.max.bytes (and the topics'
    # max.message.bytes); it must exceed limits.max_object_bytes by the headers' room.
    max_record_bytes: int = 1024 * 1024
    # Object topics are created with cleanup.policy=compact, so that an erasure's
    # tombstones remove the erased copy from the topics (and a replay from the
    # beginning gets only the latest version of each copy); the audit topic keeps
    # the delete policy. Topics that exist already are left as they are.
    compact_topics: bool = True
    # How long a tombstone stays after compaction (delete.retention.ms): a partner's
    # own consumer offline longer than this misses the erasure notice. 30 days.
    delete_retention_ms: int = 30 * 24 * 3600 * 1000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    # SSL / SASL_SSL: the CA that signed the brokers' certificates (empty: the system's),
    # and a client certificate and key when the brokers require one.
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""


class SubscriptionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Open Subscribe streams in this process, and of any one partner.
    max_open: int = 1000
    max_open_per_partner: int = 16
    # Deliveries per streamed message, and its size: a message holds deliveries up to
    # max_batch_bytes of objects (one larger object goes alone).
    max_batch: int = 500
    max_batch_bytes: int = 2 * 1024 * 1024
    # Records the shared live tail keeps in memory, by count and by bytes of objects; a
    # stream further behind reads with a reader of its own until it catches up.
    tail_window: int = 50_000
    tail_window_bytes: int = 128 * 1024 * 1024
    # An idle stream sends its cursor this often (how a vanished subscriber is noticed).
    heartbeat_s: float = 5.0
    # A stream whose subscriber takes no message for this long (its flow-control window
    # stays shut) ends with UNAVAILABLE; it resumes from its last cursor.
    stall_timeout_s: float = 60.0


class RelaySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Outbox rows per publish, and their bytes (one larger object goes alone).
    batch_size: int = 1000
    batch_bytes: int = 16 * 1024 * 1024
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
    # One `deliver` entry lists what one partner received of one owner's objects over
    # at most this long (and at most 256 versions): fewer, larger entries under heavy
    # fan-out. A crash can lose the deliveries of the last span (never an object).
    delivery_span_s: float = 1.0


class PostgresSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The connection pool to PostgreSQL (used when ``database`` is a postgresql:// URL)."""

    # Connections per process; every replica opens its own pool.
    pool_size: int = 10
    # A connection attempt or a statement that takes longer fails (the store reports
    # Unavailable and gRPC health NOT_SERVING) instead of hanging the call.
    timeout_s: float = 10.0


class MetricsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Prometheus metrics over HTTP (``GET /metrics``)."""

    # HOST:PORT to serve metrics on; empty: no metrics endpoint.
    listen: str = ""


# The embedded default's TAXII address (taxii.listen = "default" on the embedded store
# and bus); see TaxiiSettings.
EMBEDDED_TAXII_LISTEN = "127.0.0.1:6000"


class TaxiiSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TAXII 2.1 over HTTP(S), beside gRPC, with the same credentials and TLS settings
    (docs/taxii.md)."""

    # HOST:PORT, or "" (off), or "default": 127.0.0.1:6000 on the embedded default (no
    # database URL and no Kafka: a laptop), off otherwise (production turns it on by
    # naming an address). An address other machines can reach needs TLS or insecure,
    # as gRPC's listen does.
    listen: str = "default"
    # Connections held open at once, from anyone (before any credential is checked);
    # one more is closed as soon as it is accepted, so that sockets opened and left idle
    # cannot use up the process's file descriptors, which gRPC needs too.
    max_connections: int = 1000
    # Of those, from one address at most (0: no such limit, e.g. behind a proxy that
    # limits connections itself: every connection then comes from the proxy).
    max_connections_per_address: int = 100


class RetentionSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How long objects are kept (docs/retention.md). A copy past its maximum age, or
    an indicator past its ``valid_until``, is erased by the same path as an erasure
    (notices, tombstones, an ERASE audit entry with reason retention or expired)."""

    # Days a copy is kept after its latest version was accepted, per TLP (the latest
    # version's marking): {"amber+strict" = 365, red = 90}. A level not named is kept
    # for ever. EXCHANGE_RETENTION_MAX_AGE_DAYS="red=90,amber+strict=365".
    # ("amber_strict" is read as "amber+strict": a bare TOML key cannot hold a '+'.)
    max_age_days: dict[str, int] = msgspec.field(default_factory=dict)
    # Days a copy shared with a community is kept at most: {"hotlines-eu" = 30}. The
    # strictest rule that applies wins. EXCHANGE_RETENTION_COMMUNITIES="hotlines-eu=30".
    communities: dict[str, int] = msgspec.field(default_factory=dict)
    # Erase indicators whose latest version's valid_until has passed (reason expired).
    # Off by default, like the ages: an erasure cannot be undone (docs/retention.md).
    expire_valid_until: bool = False
    # How often `exchange serve` erases what is due (one process among replicas).
    interval_s: float = 3600.0
    # Erasures per run at most (the next run goes on with the rest).
    batch: int = 1000

    def max_age_for(self, tlp: Tlp) -> int | None:
        """The days ``tlp`` is kept at most; None: for ever."""
        return self.max_ages().get(tlp)

    def max_ages(self) -> dict[Tlp, int]:
        """``max_age_days`` by level (the spellings resolved; checked on load)."""
        return {Tlp(_tlp_key(name)): days for name, days in self.max_age_days.items()}


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # "text" for people, "json" (one object per line) for log collectors.
    format: str = "text"
    level: str = "info"


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: str = "./exchange-data"
    # Empty: the SQLite file in data_dir. A postgresql://USER@HOST:PORT/DB URL: PostgreSQL,
    # which several replicas can share (the password is best given as PGPASSWORD).
    database: str = ""
    listen: str = "127.0.0.1:50051"
    # Allow listening on a non-loopback address without TLS (behind a TLS-terminating
    # proxy or inside a private network); refused otherwise.
    insecure: bool = False
    # On SIGTERM: how long in-flight calls may take to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Every client connection is closed after this long, with connection_grace_s more for
    # the calls on it to finish; clients reconnect (the SDK resumes subscriptions from
    # their cursor). A subscriber that stopped reading cannot be cut off otherwise: gRPC
    # cannot take back the message it holds for it.
    connection_max_age_s: float = 3600.0
    connection_grace_s: float = 600.0
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
    postgres: PostgresSettings = msgspec.field(default_factory=PostgresSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    taxii: TaxiiSettings = msgspec.field(default_factory=TaxiiSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def taxii_listen(self) -> str:
        """Where TAXII listens ("" when off), taxii.listen's "default" resolved."""
        if self.taxii.listen != "default":
            return self.taxii.listen
        embedded = not self.database and not self.kafka.bootstrap
        return EMBEDDED_TAXII_LISTEN if embedded else ""

    @property
    def sqlite_path(self) -> Path:
        """The embedded store's file (without a ``database`` URL)."""
        return self.data_path / "exchange.sqlite3"

    @property
    def signing_key_path(self) -> Path:
        return Path(self.audit.signing_key_file or self.data_path / "audit-signing-key.pem")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ftype in _fields(Settings):
        if isinstance(ftype, type) and issubclass(ftype, msgspec.Struct):
            section: dict[str, Any] = {}
            maps = _map_fields(ftype)
            for sub, _ in _fields(ftype):
                key = f"{ENV_PREFIX}{name}_{sub}".upper()
                if key in environ:
                    value = environ[key]
                    section[sub] = _env_map(key, value) if sub in maps else value
            if section:
                out[name] = section
        elif (key := f"{ENV_PREFIX}{name}".upper()) in environ:
            out[name] = environ[key]
    return out


def _map_fields(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of ``struct`` that are tables (dicts), e.g. retention.communities."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(f.name for f in info.fields if isinstance(f.type, msgspec.inspect.DictType))


def _env_map(key: str, value: str) -> dict[str, str]:
    """A table from the environment: ``name=value,name=value`` (empty: an empty table).
    The values are converted and checked with the rest of the settings."""
    table: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, entry = item.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(
                f'{key}: {item.strip()!r} is not NAME=VALUE (e.g. {key}="red=90,amber+strict=365")'
            )
        table[name.strip()] = entry.strip()
    return table


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


# Settings whose values are secrets: shown masked by ``effective_settings``.
SECRET_FIELDS = frozenset({"kafka.sasl_password"})


def parse_listen(listen: str, setting: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6) -> (host, port); port 0: any free one.
    InvalidArgument naming ``setting`` otherwise."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(
            f"{setting} {listen!r} is not HOST:PORT (e.g. 127.0.0.1:9090, 0.0.0.0:9090)"
        )
    return host, int(port)


def mask_url(url: str) -> str:
    """``url`` with its passwords (in the user part, or ``password=``/``sslpassword=``
    parameters) shown as ``***``: what messages, logs and ``config check`` may show.
    Anything that is not a postgresql:// URL is not shown at all."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in {"postgresql", "postgres"}:
        # Not a URL (a "host=... password=..." string?): show nothing of it.
        return "(not a postgresql:// URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if has_password else ''}@{hosts}"
    query = "&".join(
        f"{k}=***" if k.lower() in {"password", "sslpassword"} else f"{k}={v}"
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def effective_settings(
    settings: Settings,
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[tuple[str, Any, str]]:
    """Every setting as (dotted name, value with secrets masked, where it came from:
    "default", "file", "env EXCHANGE_..." or "option"), in declaration order."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    from_file = tomllib.loads(Path(config_file).read_text()) if config_file else {}
    from_env = _env_overrides(environ)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    out: list[tuple[str, Any, str]] = []

    def source(section: str | None, name: str) -> str:
        def has(layer: Mapping[str, Any]) -> bool:
            if section is None:
                return name in layer
            inner = layer.get(section)
            return isinstance(inner, Mapping) and name in inner

        if has(given):
            return "option"
        if has(from_env):
            key = f"{ENV_PREFIX}{section}_{name}" if section else f"{ENV_PREFIX}{name}"
            return f"env {key.upper()}"
        return "file" if has(from_file) else "default"

    def shown(dotted: str, value: Any) -> Any:
        if dotted in SECRET_FIELDS and value:
            return "***"
        if dotted == "database" and value:
            return mask_url(str(value))
        if isinstance(value, dict):
            return dict(sorted(value.items()))
        return value.value if isinstance(value, enum.Enum) else value

    for name, struct in _fields(Settings):
        value = getattr(settings, name)
        if struct is None:
            out.append((name, shown(name, value), source(None, name)))
            continue
        for sub, _ in _fields(struct):
            dotted = f"{name}.{sub}"
            out.append((dotted, shown(dotted, getattr(value, sub)), source(name, sub)))
    return out


# Room a record needs beyond its object: key (a STIX id) and headers (docs/kafka.md).
RECORD_HEADROOM_BYTES = 32 * 1024


def _check(s: Settings) -> None:
    limits = s.limits
    for name in msgspec.structs.asdict(limits):
        if getattr(limits, name) <= 0:
            raise InvalidArgument(f"limits.{name} must be a positive number")
    if limits.submissions_at_once_per_partner > limits.max_submissions_per_partner:
        raise InvalidArgument(
            "limits.submissions_at_once_per_partner must not exceed"
            " limits.max_submissions_per_partner"
        )
    subs = s.subscriptions
    for name in msgspec.structs.asdict(subs):
        if getattr(subs, name) <= 0:
            raise InvalidArgument(f"subscriptions.{name} must be a positive number")
    if s.kafka.bootstrap and limits.max_object_bytes + RECORD_HEADROOM_BYTES > (
        s.kafka.max_record_bytes
    ):
        raise InvalidArgument(
            f"kafka.max_record_bytes ({s.kafka.max_record_bytes:,}) must exceed"
            f" limits.max_object_bytes ({limits.max_object_bytes:,}) by at least"
            f" {RECORD_HEADROOM_BYTES:,} bytes for the record's key and headers: every"
            " accepted object must be publishable"
        )
    if s.kafka.delete_retention_ms < 0:
        raise InvalidArgument(
            "kafka.delete_retention_ms must be 0 or more (milliseconds a tombstone is kept)"
        )
    if not s.topic_prefix or not all(c.isalnum() or c in "._-" for c in s.topic_prefix):
        raise InvalidArgument("topic_prefix may hold only letters, digits, '.', '_' and '-'")
    if bool(s.tls.cert_file) != bool(s.tls.key_file):
        raise InvalidArgument("tls.cert_file and tls.key_file go together: set both or neither")
    if s.tls.client_ca_file and not s.tls.cert_file:
        raise InvalidArgument(
            "tls.client_ca_file (mutual TLS) needs the server's own tls.cert_file and key_file"
        )
    _check_audit(s.audit)
    if s.validation_workers < 0:
        raise InvalidArgument("validation_workers must be 0 (one per core) or more")
    _check_retention(s.retention)
    _check_operations(s)


# A community's name, as the registry allows it (exchange.registry.COMMUNITY_NAME; a
# test holds them equal: the registry's module is too heavy to import here).
COMMUNITY_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A century: beyond it a number of days is a typo (and past datetime's range).
_MAX_RETENTION_DAYS = 100 * 366


def _tlp_key(name: str) -> str:
    return "amber+strict" if name == "amber_strict" else name


def _check_retention(r: RetentionSettings) -> None:
    levels = ", ".join(t.value for t in Tlp)
    seen: set[str] = set()
    for name, days in r.max_age_days.items():
        level = _tlp_key(name)
        if level not in {t.value for t in Tlp}:
            raise InvalidArgument(
                f"retention.max_age_days: {name!r} is not a TLP level (one of {levels};"
                ' in TOML write "amber+strict" in quotes, or amber_strict)'
            )
        if level in seen:
            raise InvalidArgument(f"retention.max_age_days names {level} twice")
        seen.add(level)
        if not 1 <= days <= _MAX_RETENTION_DAYS:
            raise InvalidArgument(
                f'retention.max_age_days."{name}" must be a whole number of days from 1 to'
                f" {_MAX_RETENTION_DAYS:,} (leave a level out to keep it for ever)"
            )
    for name, days in r.communities.items():
        if not COMMUNITY_NAME.match(name):
            raise InvalidArgument(
                f"retention.communities: {name!r} is not a community name (lower-case"
                " letters, digits and '-', as `exchange community add` takes them)"
            )
        if not 1 <= days <= _MAX_RETENTION_DAYS:
            raise InvalidArgument(
                f'retention.communities."{name}" must be a whole number of days from 1 to'
                f" {_MAX_RETENTION_DAYS:,} (leave a community out to keep by TLP alone)"
            )
    if not r.interval_s > 0:
        raise InvalidArgument("retention.interval_s must be a positive number of seconds")
    if r.batch < 1:
        raise InvalidArgument("retention.batch must be 1 or more (erasures per run)")


def _check_audit(audit: AuditSettings) -> None:
    if not audit.origin or "\n" in audit.origin:
        raise InvalidArgument("audit.origin must be one non-empty line")
    if audit.checkpoint_interval_s <= 0:
        raise InvalidArgument("audit.checkpoint_interval_s must be a positive number of seconds")
    if not 0 <= audit.delivery_span_s <= 60:
        raise InvalidArgument(
            "audit.delivery_span_s must be between 0 and 60 seconds (0: gathered only until"
            " the next append, every ~50 ms)"
        )


def _check_database_url(url: str) -> None:
    """A postgresql:// URL the driver can read: hosts with numeric ports (several,
    comma-separated, as libpq allows). Its password is never repeated."""
    expected = "expected postgresql://USER@HOST:PORT/DATABASE"
    if not url.startswith(("postgresql://", "postgres://")):
        raise InvalidArgument(
            f"database must be empty (the SQLite file in data_dir) or a URL; {expected}"
        )
    try:
        hosts = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    except ValueError as exc:
        raise InvalidArgument(f"database is not a valid URL ({exc}); {expected}") from None
    for host in hosts.split(","):
        # After an IPv6 literal's "]", if any: ":PORT".
        _, colon, port = host.rpartition("]")[2].rpartition(":")
        if colon and (not port.isdigit() or int(port) > 65535):
            raise InvalidArgument(
                f"database {mask_url(url)}: port {port!r} is not a number from 0 to 65535;"
                f" {expected}"
            )


def _check_operations(s: Settings) -> None:
    """Where the data lives, and how the process is run and watched."""
    if s.database:
        _check_database_url(s.database)
    parse_listen(s.listen)
    if s.metrics.listen:
        parse_listen(s.metrics.listen, "metrics.listen")
    if s.taxii_listen:
        parse_listen(s.taxii_listen, "taxii.listen")
    if s.taxii.max_connections < 1:
        raise InvalidArgument("taxii.max_connections must be 1 or more")
    if s.taxii.max_connections_per_address < 0:
        raise InvalidArgument("taxii.max_connections_per_address must be 0 (no limit) or more")
    if s.postgres.pool_size < 2:
        raise InvalidArgument("postgres.pool_size must be 2 or more")
    if s.postgres.timeout_s <= 0 or s.shutdown_grace_s < 0:
        raise InvalidArgument("postgres.timeout_s and shutdown_grace_s must be positive seconds")
    if s.connection_max_age_s <= 0 or s.connection_grace_s <= 0:
        raise InvalidArgument(
            "connection_max_age_s and connection_grace_s must be positive seconds"
        )
    if s.logging.format not in ("text", "json"):
        raise InvalidArgument('logging.format must be "text" or "json"')
    if s.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InvalidArgument("logging.level must be debug, info, warning or error")

"""Operator commands around the server: ``exchange db migrate``,
``exchange config check`` and ``exchange health``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from exchange import errors
from exchange.cli._options import (
    ca_file_option,
    config_option,
    data_dir_option,
    database_option,
    load_cli_settings,
)
from exchange.cli._output import ExitCode, fail, one_line
from exchange.config import Settings, effective_settings, mask_url
from exchange.server import check_listen
from exchange.store import open_store

__all__ = ["config", "db", "health"]


@click.group()
def db() -> None:
    """The store's schema (SQLite file or PostgreSQL database)."""


@db.command()
@config_option
@data_dir_option
@database_option
def migrate(config_file: str | None, data_dir: str | None, database: str | None) -> None:
    """Bring the store's schema to this release's version, then exit.

    `exchange serve` migrates on start too; run this first to upgrade once before
    rolling out new replicas (each step runs in one transaction, and replicas that
    start together wait for each other). A store written by a newer release is
    refused.

    \b
    Examples:
      exchange db migrate --database postgresql://exchange@db.internal/exchange
      exchange db migrate --data-dir /var/lib/exchange
    """
    settings = load_cli_settings(config_file, data_dir=data_dir, database=database)
    store = open_store(settings)
    try:
        found, now = asyncio.run(store.migrate())
    except errors.ExchangeError as exc:
        fail(exc.message)
    where = _where(settings)
    if found == now:
        click.echo(f"{where}: schema version {now}, nothing to do")
    else:
        click.echo(f"{where}: schema migrated from version {found} to {now}")


def _where(settings: Settings) -> str:
    if settings.database:
        return f"database {mask_url(settings.database)}"
    return f"data directory {settings.data_path}"


@click.group()
def config() -> None:
    """The exchange's settings (TOML file, EXCHANGE_* environment)."""


@config.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the settings as one JSON object.")
def check(config_file: str | None, as_json: bool) -> None:
    """Validate the settings and print the effective values, secrets masked.

    Reads the file (--config or EXCHANGE_CONFIG) and the EXCHANGE_* environment as
    `exchange serve` would, checks every value, that the files it names can be read,
    and that the listen address is safe; prints each setting with where it came from.
    Exit status 0 when valid, 2 when not (each problem is named).

    \b
    Example:
      EXCHANGE_KAFKA_SASL_PASSWORD=... exchange config check --config /etc/exchange.toml
    """
    try:
        settings = load_cli_settings(config_file)
    except click.UsageError as exc:
        fail(f"invalid settings: {exc.message}", ExitCode.INVALID)
    rows = effective_settings(settings, config_file)
    problems = _problems(settings)
    if as_json:
        doc = {"valid": not problems, "problems": problems}
        doc["settings"] = {name: {"value": value, "source": src} for name, value, src in rows}
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_as_toml(rows))
        for problem in problems:
            click.echo(f"exchange: {one_line(problem)}", err=True)
        if not problems:
            click.echo("settings are valid", err=True)
    if problems:
        sys.exit(ExitCode.INVALID)


def _problems(settings: Settings) -> list[str]:
    """What would stop `exchange serve` with these settings, beyond their types."""
    problems: list[str] = []
    try:
        check_listen(settings)
    except errors.ExchangeError as exc:
        problems.append(exc.message)
    files = {
        "tls.cert_file": settings.tls.cert_file,
        "tls.key_file": settings.tls.key_file,
        "tls.client_ca_file": settings.tls.client_ca_file,
        "kafka.ssl_cafile": settings.kafka.ssl_cafile,
        "kafka.ssl_certfile": settings.kafka.ssl_certfile,
        "kafka.ssl_keyfile": settings.kafka.ssl_keyfile,
    }
    for name, path in files.items():
        if path and not os.access(path, os.R_OK):
            problems.append(f"{name}: cannot read {path}")
    key = settings.signing_key_path
    if key.exists() and not os.access(key, os.R_OK):
        problems.append(f"audit signing key {key} exists but cannot be read")
    elif not key.exists() and not _creatable(key):
        problems.append(f"audit signing key {key} does not exist and cannot be created there")
    if settings.kafka.bootstrap:
        # Imported here: only Kafka settings need the Kafka client.
        from exchange.bus.kafka import client_options  # noqa: PLC0415

        try:
            client_options(settings.kafka, "config-check")
        except errors.ExchangeError as exc:
            problems.append(exc.message)
    return problems


def _creatable(path: Path) -> bool:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return os.access(parent, os.W_OK)


def _as_toml(rows: list[tuple[str, Any, str]]) -> str:
    lines: list[str] = []
    section = ""
    for name, value, source in rows:
        head, _, field = name.rpartition(".")
        if head != section:
            lines += ["", f"[{head}]"]
            section = head
        text = orjson.dumps(value).decode() if isinstance(value, str) else _scalar(value)
        lines.append(f"{field} = {text}{' ' * max(1, 34 - len(field) - len(text))}# {source}")
    return "\n".join(lines).lstrip("\n")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        # A table (retention.max_age_days): an inline TOML table, keys quoted.
        inner = ", ".join(f"{orjson.dumps(k).decode()} = {_scalar(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    return str(value)


@click.command()
@click.option(
    "--target",
    metavar="HOST:PORT",
    default="127.0.0.1:50051",
    show_default=True,
    help="The exchange server to ask.",
)
@ca_file_option("PEM root certificates: connect with TLS (default: plaintext).")
@click.option(
    "--server-name",
    metavar="NAME",
    help="With --ca-file: the name to expect in the server's certificate, when it is not"
    " the host of --target (e.g. probing 127.0.0.1 inside a container).",
)
@click.option(
    "--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for an answer."
)
def health(target: str, ca_file: str | None, server_name: str | None, timeout: float) -> None:
    """Ask a server's gRPC health service; exit 0 when it is SERVING.

    NOT_SERVING means the server cannot reach its database or Kafka, or is
    shutting down (exit 1); no answer exits 1 too. Meant for container health checks.

    \b
    Example:
      exchange health --target 127.0.0.1:50051
    """
    # Imported here: the other operator commands need no gRPC channel.
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    options: list[tuple[str, Any]] = []
    if ca_file is not None:
        roots = Path(ca_file).read_bytes()
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            click.echo(f"exchange at {target}: no answer ({exc.code().name})", err=True)
            sys.exit(ExitCode.ERROR)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    click.echo(f"exchange at {target}: {status}")
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        sys.exit(ExitCode.ERROR)

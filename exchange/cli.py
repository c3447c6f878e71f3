"""The ``exchange`` command: run the server, manage partners, submit and watch the feed."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
import uuid
from typing import Any

import click
import orjson

from exchange.auth import hash_token, new_token
from exchange.cli_feed import submit, subscribe
from exchange.config import Settings, load_settings
from exchange.errors import ExchangeError
from exchange.model import Partner
from exchange.server import ExchangeServer, open_store
from exchange.stix import INDUSTRY_SECTORS, parse_tlp

__all__ = ["main"]

_IDENTITY = re.compile(r"^identity--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="EXCHANGE_CONFIG",
    help="TOML settings file (env: EXCHANGE_CONFIG). See docs/configuration.md.",
)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Where the embedded store keeps its files"
    " (env: EXCHANGE_DATA_DIR; default ./exchange-data).",
)


def _settings(config_file: str | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file, overrides=overrides)
    except ExchangeError as exc:
        raise click.UsageError(exc.message) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trafficking-indicator-exchange")
def main() -> None:
    """Share STIX 2.1 indicators of human trafficking between partners.

    \b
    Operators:  exchange serve, exchange partner add
    Partners:   exchange submit FILE..., exchange subscribe
    """


@main.command()
@_config_option
@_data_dir_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to serve gRPC on (env: EXCHANGE_LISTEN; default 127.0.0.1:50051).",
)
@click.option(
    "--kafka-bootstrap",
    metavar="HOST:PORT[,HOST:PORT]",
    help="Use Kafka as the bus (env: EXCHANGE_KAFKA_BOOTSTRAP). Without it the embedded"
    " in-process bus is used.",
)
@click.option("--topic-prefix", help="Prefix of the bus topic names (default 'tix').")
@click.option(
    "--no-kafka-idempotence",
    is_flag=True,
    default=None,
    help="Turn off the idempotent producer (needed for brokers without it, such as Tansu).",
)
def serve(
    config_file: str | None,
    data_dir: str | None,
    listen: str | None,
    kafka_bootstrap: str | None,
    topic_prefix: str | None,
    no_kafka_idempotence: bool | None,
) -> None:
    """Run the exchange server until interrupted.

    \b
    Examples:
      exchange serve
      exchange serve --data-dir /var/lib/exchange --listen 127.0.0.1:6000
      exchange serve --kafka-bootstrap kafka-1:9092,kafka-2:9092
    """
    kafka: dict[str, Any] = {}
    if kafka_bootstrap:
        kafka["bootstrap"] = kafka_bootstrap
    if no_kafka_idempotence:
        kafka["enable_idempotence"] = False
    settings = _settings(
        config_file,
        data_dir=data_dir,
        listen=listen,
        topic_prefix=topic_prefix,
        kafka=kafka or None,
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_serve(settings))
    except ExchangeError as exc:
        click.echo(f"exchange: {exc.message}", err=True)
        sys.exit(1)


async def _serve(settings: Settings) -> None:
    server = ExchangeServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start()
        host = settings.listen.rsplit(":", 1)[0]
        bus = f"kafka {settings.kafka.bootstrap}" if settings.kafka.bootstrap else "embedded"
        click.echo(
            f"exchange listening on {host}:{port}"
            f" (data: {settings.data_path.resolve()}, bus: {bus})",
            err=True,
        )
        await stop.wait()
        click.echo("exchange: shutting down", err=True)
    finally:
        await server.stop()


@main.group()
def partner() -> None:
    """Register and list partners (works while the server runs)."""


@partner.command("add")
@click.option("--name", required=True, help="The organisation's name.")
@click.option(
    "--sector",
    required=True,
    help="STIX industry-sector-ov word, e.g. non-profit, technology, government-national,"
    " financial-services.",
)
@click.option(
    "--identity-id",
    help="Keep an existing STIX identity (identity--UUID); default: a new one.",
)
@click.option(
    "--default-tlp",
    default="amber",
    show_default=True,
    help="TLP given to this partner's objects that carry no TLP marking.",
)
@_config_option
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def partner_add(
    name: str,
    sector: str,
    identity_id: str | None,
    default_tlp: str,
    config_file: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Register a partner and print its first token (shown once, stored only as a hash).

    \b
    Example:
      exchange partner add --name "Harbor Light Alliance" --sector non-profit --json
    """
    if sector not in INDUSTRY_SECTORS:
        raise click.BadParameter(
            f"'{sector}' is not a STIX industry-sector-ov word; use one of: "
            + ", ".join(sorted(INDUSTRY_SECTORS)),
            param_hint="--sector",
        )
    if identity_id is not None and not _IDENTITY.match(identity_id):
        raise click.BadParameter(
            "expected identity--UUID (lower-case hex),"
            " e.g. identity--a85607cf-558b-5b14-aeb1-d1b62765ef44",
            param_hint="--identity-id",
        )
    try:
        tlp = parse_tlp(default_tlp)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--default-tlp") from exc
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="--name")
    settings = _settings(config_file, data_dir=data_dir)
    new = Partner(
        partner_id=_partner_id(name),
        name=name.strip(),
        sector=sector,
        identity_id=identity_id or f"identity--{uuid.uuid4()}",
        default_tlp=tlp,
    )
    token = new_token()
    try:
        asyncio.run(_add_partner(settings, new, hash_token(token)))
    except ExchangeError as exc:
        click.echo(f"exchange: {exc.message}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(
            orjson.dumps(
                {"partner_id": new.partner_id, "identity_id": new.identity_id, "token": token}
            ).decode()
        )
    else:
        click.echo(f"partner id:  {new.partner_id}")
        click.echo(f"identity:    {new.identity_id}")
        click.echo(f"token:       {token}")
        click.echo(
            "The token is shown once; give it to the partner over a secure channel.", err=True
        )


def _partner_id(name: str) -> str:
    """A readable, topic-safe id: a slug of the name plus a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "partner"
    return f"{slug}-{uuid.uuid4().hex[:6]}"


async def _add_partner(settings: Settings, new: Partner, token_hash: bytes) -> None:
    store = open_store(settings)
    await store.open()
    try:
        await store.add_partner(new, token_hash)
    finally:
        await store.close()


@partner.command("list")
@_config_option
@_data_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def partner_list(config_file: str | None, data_dir: str | None, as_json: bool) -> None:
    """List registered partners."""
    settings = _settings(config_file, data_dir=data_dir)

    async def run() -> list[Partner]:
        store = open_store(settings)
        await store.open()
        try:
            return await store.list_partners()
        finally:
            await store.close()

    for p in asyncio.run(run()):
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "partner_id": p.partner_id,
                        "name": p.name,
                        "sector": p.sector,
                        "identity_id": p.identity_id,
                        "default_tlp": p.default_tlp.value,
                        "disabled": p.disabled,
                    }
                ).decode()
            )
        else:
            click.echo(f"{p.partner_id}\t{p.identity_id}\t{p.sector}\t{p.name}")


main.add_command(submit)
main.add_command(subscribe)

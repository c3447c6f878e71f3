"""The ``exchange`` command: run the server, manage partners, submit and watch the feed."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from exchange.cli_admin import community, partner, token
from exchange.cli_admin import config_option as _config_option
from exchange.cli_admin import data_dir_option as _data_dir_option
from exchange.cli_admin import load_cli_settings as _settings
from exchange.cli_audit import audit
from exchange.cli_feed import get, revoke, sighting, submit, subscribe
from exchange.config import Settings
from exchange.errors import ExchangeError
from exchange.server import ExchangeServer

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trafficking-indicator-exchange")
def main() -> None:
    """Share STIX 2.1 indicators of human trafficking between partners.

    \b
    Operators:  exchange serve, exchange partner|community|token ...
    Auditors:   exchange audit log|verify|export
    Partners:   exchange submit FILE|DIR..., exchange subscribe, exchange get ID,
                exchange sighting ID, exchange revoke ID
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


main.add_command(partner)
main.add_command(community)
main.add_command(token)
main.add_command(submit)
main.add_command(subscribe)
main.add_command(get)
main.add_command(sighting)
main.add_command(revoke)
main.add_command(audit)

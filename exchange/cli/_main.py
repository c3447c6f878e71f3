"""The ``exchange`` command: run the server, manage partners, submit and watch the feed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from typing import Any

import click

from exchange._memory import collect_less_often, return_large_blocks
from exchange.cli._options import config_option as _config_option
from exchange.cli._options import data_dir_option as _data_dir_option
from exchange.cli._options import database_option as _database_option
from exchange.cli._options import load_cli_settings as _settings
from exchange.cli._output import fail
from exchange.cli.audit import audit
from exchange.cli.erase import erase
from exchange.cli.objects import get, revoke, sighting
from exchange.cli.ops import config, db, health
from exchange.cli.partners import community, partner
from exchange.cli.retention import retention
from exchange.cli.submit import submit
from exchange.cli.subscribe import subscribe
from exchange.cli.tokens import token
from exchange.config import Settings, mask_url, parse_listen
from exchange.errors import ExchangeError
from exchange.logs import configure_logging
from exchange.server import SHUTDOWN_SLACK_S, ExchangeServer

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trafficking-indicator-exchange")
def main() -> None:
    """Share STIX 2.1 indicators of human trafficking between partners.

    \b
    Operators:  exchange serve, exchange partner|community|token ...,
                exchange db migrate, exchange config check, exchange health,
                exchange erase ID --data-dir (a court order, a data subject's request),
                exchange retention plan|run
    Auditors:   exchange audit log|verify|export
    Partners:   exchange submit FILE|DIR..., exchange subscribe, exchange get ID,
                exchange sighting ID, exchange revoke ID, exchange erase ID
    """


@main.command()
@_config_option
@_data_dir_option
@_database_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to serve gRPC on (env: EXCHANGE_LISTEN; default 127.0.0.1:50051). An"
    " address other machines can reach needs TLS (--tls-cert/--tls-key) or --insecure.",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Allow plain gRPC on a non-loopback address (behind a TLS-terminating proxy or on"
    " a private network only).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve TLS with this certificate chain (PEM; env: EXCHANGE_TLS_CERT_FILE).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    help="The private key of --tls-cert (PEM; env: EXCHANGE_TLS_KEY_FILE).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="Require client certificates from this CA (mutual TLS; env: EXCHANGE_TLS_CLIENT_CA_FILE).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics, /healthz and /readyz over HTTP here"
    " (env: EXCHANGE_METRICS_LISTEN; default: off).",
)
@click.option(
    "--taxii-listen",
    metavar="HOST:PORT",
    help="Serve TAXII 2.1 over HTTP here, with the gRPC TLS settings (env:"
    " EXCHANGE_TAXII_LISTEN; default: 127.0.0.1:6000 on the embedded store and bus, off"
    " with --database or --kafka-bootstrap; '' turns it off).",
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
    database: str | None,
    listen: str | None,
    insecure: bool | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    metrics_listen: str | None,
    taxii_listen: str | None,
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
      exchange serve --database postgresql://exchange@db.internal/exchange \\
          --listen 0.0.0.0:50051 --tls-cert server.pem --tls-key server.key

    SIGTERM or Ctrl-C shuts down gracefully: no new calls, open subscriptions end
    with UNAVAILABLE (clients resume from their last cursor), in-flight submissions
    finish (up to shutdown_grace_s), accepted objects are published.
    """
    kafka: dict[str, Any] = {}
    if kafka_bootstrap:
        kafka["bootstrap"] = kafka_bootstrap
    if no_kafka_idempotence:
        kafka["enable_idempotence"] = False
    tls = {"cert_file": tls_cert, "key_file": tls_key, "client_ca_file": tls_client_ca}
    settings = _settings(
        config_file,
        data_dir=data_dir,
        database=database,
        listen=listen,
        insecure=insecure,
        topic_prefix=topic_prefix,
        kafka=kafka or None,
        tls={k: v for k, v in tls.items() if v} or None,
        metrics={"listen": metrics_listen} if metrics_listen else None,
        taxii={"listen": taxii_listen} if taxii_listen is not None else None,
    )
    # Before anything is created (the data directory, the signing key): a server that
    # cannot listen must leave nothing behind.
    _check_listen_address(settings.listen)
    configure_logging(settings.logging)
    return_large_blocks()
    try:
        asyncio.run(_serve(settings))
    except ExchangeError as exc:
        fail(exc.message)


_LISTEN_HINT = "choose another with --listen HOST:PORT (or EXCHANGE_LISTEN, or listen in --config)"


def _check_listen_address(listen: str) -> None:
    """Fail in one line when ``listen`` cannot be bound (taken, or not this machine's),
    before gRPC tries: gRPC's own failure is a core log line and a vague message."""
    host, port = parse_listen(listen)  # already checked when the settings were loaded
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        fail(f"cannot listen on {listen}: {err.strerror}; {_LISTEN_HINT}")
    for family, kind, proto, _name, address in addresses:
        with contextlib.closing(socket.socket(family, kind, proto)) as probe:
            # As gRPC binds: reusing a port whose last connections are in TIME_WAIT.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    fail(
                        f"cannot listen on {listen}: the address is in use (another exchange"
                        f" serve?); {_LISTEN_HINT}"
                    )
                if err.errno == errno.EADDRNOTAVAIL:
                    fail(
                        f"cannot listen on {listen}: {host} is not an address of this"
                        f" machine; {_LISTEN_HINT}"
                    )
                fail(f"cannot listen on {listen}: {err.strerror or err}; {_LISTEN_HINT}")


async def _serve(settings: Settings) -> None:
    server = ExchangeServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start()
        # Once started: what start-up made is never collected again (exchange._memory).
        collect_less_often()
        host = settings.listen.rsplit(":", 1)[0]
        bus = f"kafka {settings.kafka.bootstrap}" if settings.kafka.bootstrap else "embedded"
        data = (
            f"database {mask_url(settings.database)}"
            if settings.database
            else f"data: {settings.data_path.resolve()}"
        )
        click.echo(f"exchange listening on {host}:{port} ({data}, bus: {bus})", err=True)
        if server.taxii is not None:
            scheme = "https" if settings.tls.cert_file else "http"
            taxii_host = settings.taxii_listen.rsplit(":", 1)[0]
            click.echo(
                f"TAXII 2.1 on {scheme}://{taxii_host}:{server.taxii.port}/taxii2/", err=True
            )
        await stop.wait()
        click.echo("exchange: shutting down", err=True)
    finally:
        try:
            # Bounded: calls get shutdown_grace_s, publishing and closing the rest.
            async with asyncio.timeout(settings.shutdown_grace_s + SHUTDOWN_SLACK_S):
                await server.stop()
        except TimeoutError:
            raise ExchangeError(
                f"shutdown did not finish within {settings.shutdown_grace_s + SHUTDOWN_SLACK_S:g}"
                " s; exiting anyway (accepted objects not yet published stay in the outbox"
                " and are published on the next start)"
            ) from None


main.add_command(partner)
main.add_command(community)
main.add_command(token)
main.add_command(submit)
main.add_command(subscribe)
main.add_command(get)
main.add_command(sighting)
main.add_command(revoke)
main.add_command(erase)
main.add_command(audit)
main.add_command(retention)
main.add_command(db)
main.add_command(config)
main.add_command(health)

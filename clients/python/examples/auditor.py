"""An auditor reviews what the exchange recorded about one object, and proves it.

It lists the audit log entries about the object (who submitted it, who received
it, who looked it up), then fetches the latest signed checkpoint of the log and
checks, for each of those entries, a receipt with :func:`verify_receipt`: the
entry hashes to its leaf, the checkpoint is signed by the exchange's key, and
the inclusion proof leads from the leaf to the checkpoint's root. An exchange
that dropped or changed the entry afterwards could not produce that proof.

A partner reads the entries about the objects it submitted and its own actions;
a partner with the ``audit`` role reads every entry. Needs ``cryptography``
(``pip install 'exchange-client[verify]'``). Run it against a running exchange::

    export EXCHANGE_TARGET=exchange.example.org:50051
    export EXCHANGE_TOKEN=...            # an auditor's (or the submitter's) token
    python auditor.py indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f \\
        --public-key exchange-audit.pem  # the key the operator gave you

The operator prints that key with ``exchange audit public-key``.

Without ``--public-key`` the key is fetched from the exchange itself (trust on
first use: save it and compare it with the operator's). Exits 0 when every
entry checked out, 3 when one did not, 1 on an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from exchange_client import (
    AuditEntry,
    Checkpoint,
    ExchangeClient,
    ExchangeError,
    ReceiptError,
    verify_receipt,
)

EXIT_NOT_PROVEN = 3


def describe(entry: AuditEntry) -> str:
    who = f"{entry.actor} -> {entry.partner}" if entry.partner else entry.actor
    outcome = entry.detail.get("outcome", "")
    when = entry.at.strftime("%Y-%m-%d %H:%M:%S")
    return f"#{entry.index:<6} {when}  {entry.action:<16} {who}  {entry.version} {outcome}".rstrip()


def covering_checkpoint(client: ExchangeClient, last_index: int, wait_s: float) -> Checkpoint:
    """The latest checkpoint, waiting up to ``wait_s`` for one that covers ``last_index``
    (the exchange signs a new one every few seconds while the log grows)."""
    deadline = time.monotonic() + wait_s
    checkpoint = client.checkpoint()
    while checkpoint.tree_size <= last_index and time.monotonic() < deadline:
        time.sleep(1.0)
        checkpoint = client.checkpoint()
    return checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("object_id", help="the STIX id of the object to audit")
    parser.add_argument("--public-key", type=Path, help="the exchange's audit key (PEM)")
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for a checkpoint covering the newest entry",
    )
    args = parser.parse_args(argv)
    try:
        # verify_receipt checks Ed25519 signatures with cryptography, an optional extra.
        import cryptography  # noqa: F401, PLC0415
    except ImportError:
        print(
            "auditor.py checks signatures with the cryptography package: install the SDK"
            " with pip install 'exchange-client[verify]'",
            file=sys.stderr,
        )
        return 1

    try:
        with ExchangeClient() as client:  # EXCHANGE_TARGET, EXCHANGE_TOKEN
            entries = list(client.audit_entries(object_id=args.object_id))
            if not entries:
                print(f"no audit log entries about {args.object_id} that you may read")
                return 1
            for entry in entries:
                print(describe(entry))

            if args.public_key is not None:
                public_key = args.public_key.read_text(encoding="utf-8")
            else:
                public_key = client.public_key()
                print("(checking with the key the exchange sent: compare it with the operator's)")
            checkpoint = covering_checkpoint(client, max(e.index for e in entries), args.wait)
            print(f"checkpoint: {checkpoint.tree_size} entries, signed by {checkpoint.origin}")

            proven = failed = 0
            for entry in entries:
                if entry.index >= checkpoint.tree_size:
                    print(f"#{entry.index}: not yet in the checkpoint; run again later")
                    continue
                proof = client.inclusion_proof(entry.index, checkpoint.tree_size)
                try:
                    verify_receipt(entry.receipt, proof, checkpoint, public_key)
                except ReceiptError as err:
                    print(f"#{entry.index}: NOT PROVEN ({err.check}): {err}")
                    failed += 1
                else:
                    proven += 1
    except (ExchangeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{proven} of {len(entries)} entries proven in the signed log, {failed} failed")
    return EXIT_NOT_PROVEN if failed else 0


if __name__ == "__main__":
    sys.exit(main())

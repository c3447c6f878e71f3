"""Offline check that the exchange's log still holds a checkpoint you kept.

A signed checkpoint says "the log's first N entries have this Merkle root". Keep
one from time to time (``client.checkpoint()``, saved with ``to_json()``); later, a
newer checkpoint and a consistency proof between the two (RFC 9162 2.1.4) show
that the log has only grown since: the first N entries are still there, unchanged.
If the exchange (or whoever can edit its database) cut the log short or rewrote
an entry, no such proof exists. Without a kept checkpoint nobody can tell a log
truncated together with its newest checkpoints from one that never grew.

Nothing here talks to the exchange (``ExchangeClient.check_consistency`` fetches
the newer checkpoint and the proof, then calls ``verify_consistency``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from exchange_protocol.checkpoint import Checkpoint, CheckpointError
from exchange_protocol.merkle import EMPTY_ROOT
from exchange_protocol.merkle import verify_consistency as _verify_proof

__all__ = ["ConsistencyError", "verify_consistency"]

Check = Literal["signature", "origin", "truncated", "consistency"]


class ConsistencyError(ValueError):
    """The exchange's log does not hold a checkpoint you kept. ``str(error)`` says why
    in one line; ``check`` names the check that failed: ``"signature"`` (a checkpoint
    is not signed with the key), ``"origin"`` (the two are not of the same log),
    ``"truncated"`` (the log is now shorter than the kept checkpoint) or
    ``"consistency"`` (the log's first entries are no longer those it signed).

    A ``ValueError``, not an :class:`ExchangeError`: a verdict on data in hand.
    """

    def __init__(self, message: str, check: Check) -> None:
        super().__init__(message)
        self.check: Check = check

    def __reduce__(self) -> tuple[type[ConsistencyError], tuple[str, Check]]:
        return type(self), (str(self), self.check)


def verify_consistency(
    kept: Checkpoint,
    later: Checkpoint,
    proof: Sequence[bytes],
    public_key_pem: str | bytes,
) -> None:
    """Check, offline, that the log ``later`` signs extends the one ``kept`` signs.

    ``proof`` is the consistency proof from ``kept.tree_size`` to ``later.tree_size``
    (``client.consistency_proof(kept.tree_size, later.tree_size)``; empty when the
    sizes are equal); ``public_key_pem`` is the exchange's Ed25519 public key, the
    copy you keep. Returns ``None`` when both are signed with it and the proof holds;
    raises :class:`ConsistencyError` saying which check failed otherwise, and
    ``ImportError`` when the ``cryptography`` package is missing.
    """
    _require_cryptography()
    for which, checkpoint in (("the checkpoint you kept", kept), ("the later checkpoint", later)):
        try:
            checkpoint.verify(public_key_pem)
        except CheckpointError:
            raise ConsistencyError(
                f"{which} (size {checkpoint.tree_size:,}) is not signed with the public key:"
                " the exchange's key was replaced, or it is not this exchange's checkpoint",
                "signature",
            ) from None
    if kept.origin != later.origin:
        raise ConsistencyError(
            f"the checkpoint you kept is of the log {kept.origin!r}, the later one of"
            f" {later.origin!r}",
            "origin",
        )
    if later.tree_size < kept.tree_size:
        raise ConsistencyError(
            f"the log holds {later.tree_size:,} entries, fewer than the {kept.tree_size:,}"
            f" of the checkpoint you kept: truncated (entries {later.tree_size:,} to"
            f" {kept.tree_size - 1:,} are gone)",
            "truncated",
        )
    if kept.tree_size == 0:
        holds = kept.root_hash == EMPTY_ROOT and not proof
    else:
        holds = _verify_proof(
            kept.tree_size, later.tree_size, proof, kept.root_hash, later.root_hash
        )
    if not holds:
        raise ConsistencyError(
            f"entries before {kept.tree_size:,} differ from the checkpoint you kept: the"
            f" log of {later.tree_size:,} entries does not extend it (an entry was changed"
            " or removed, and the log rewritten since)",
            "consistency",
        )


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401, PLC0415 (optional, needed only here)
    except ImportError:
        raise ImportError(
            "verifying checkpoint signatures needs the 'cryptography' package:"
            " pip install 'exchange-client[verify]'"
        ) from None

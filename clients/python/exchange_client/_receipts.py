"""Offline verification of a receipt: is this entry in the exchange's signed log?

A receipt (``ObjectResult.receipt``, or ``AuditEntry.receipt``) says "the entry
with these bytes is at this index of the audit log". An inclusion proof and a
checkpoint signed by the exchange, fetched at any later time, prove it: the
entry hashes to the leaf, the leaf and the proof lead to the checkpoint's root,
and the checkpoint is signed with the exchange's key. Nothing here talks to the
exchange: a partner (or anyone it hands the four values to) checks with the
standard library and, for the signature, the ``cryptography`` package
(``pip install 'exchange-client[verify]'``).
"""

from __future__ import annotations

import json
from typing import Literal

from exchange_protocol.checkpoint import Checkpoint, CheckpointError
from exchange_protocol.merkle import leaf_hash, verify_inclusion

from exchange_client._models import InclusionProof, Receipt

__all__ = ["ReceiptError", "verify_receipt"]

Check = Literal["entry", "signature", "tree_size", "inclusion"]


class ReceiptError(ValueError):
    """A receipt does not verify. ``str(error)`` says why in one line; ``check`` names
    the check that failed: ``"entry"`` (the entry bytes do not match the receipt),
    ``"signature"`` (the checkpoint is not signed with the key), ``"tree_size"``
    (the proof is not for the checkpoint's tree or not for this entry) or
    ``"inclusion"`` (the proof does not lead to the checkpoint's root).

    A ``ValueError``, not an :class:`ExchangeError`: it is a verdict on data in
    hand, not a failed call to the exchange.
    """

    def __init__(self, message: str, check: Check) -> None:
        super().__init__(message)
        self.check: Check = check

    def __reduce__(self) -> tuple[type[ReceiptError], tuple[str, Check]]:
        return type(self), (str(self), self.check)


def verify_receipt(
    receipt: Receipt,
    proof: InclusionProof,
    checkpoint: Checkpoint,
    public_key_pem: str | bytes,
) -> None:
    """Check, offline, that ``receipt``'s entry is in the log that ``checkpoint`` signs.

    ``proof`` is the entry's inclusion proof in the checkpoint's tree
    (``client.inclusion_proof(receipt.log_index)`` returns both, with the latest
    checkpoint in ``proof.checkpoint``); ``public_key_pem`` is the exchange's
    Ed25519 public key, best obtained once and kept (``client.public_key()``, or
    from the operator). Returns ``None`` when everything holds; raises
    :class:`ReceiptError` saying which check failed otherwise, and
    ``ImportError`` when the ``cryptography`` package is missing.
    """
    if leaf_hash(receipt.entry) != receipt.leaf_hash:
        raise ReceiptError(
            f"the entry bytes of the receipt for log index {receipt.log_index} do not hash"
            " to its leaf hash: the entry was changed",
            "entry",
        )
    claimed = _claimed_index(receipt.entry)
    if claimed is not None and claimed != receipt.log_index:
        raise ReceiptError(
            f"the receipt's entry says it is at log index {claimed}, not {receipt.log_index}",
            "entry",
        )
    _require_cryptography()
    try:
        checkpoint.verify(public_key_pem)
    except CheckpointError as exc:
        raise ReceiptError(str(exc), "signature") from None
    if proof.tree_size != checkpoint.tree_size:
        raise ReceiptError(
            f"the inclusion proof is for a tree of {proof.tree_size} entries, the checkpoint"
            f" for one of {checkpoint.tree_size}: fetch the proof for the checkpoint's size",
            "tree_size",
        )
    if proof.log_index != receipt.log_index:
        raise ReceiptError(
            f"the inclusion proof is for log index {proof.log_index}, the receipt for"
            f" {receipt.log_index}",
            "tree_size",
        )
    if not verify_inclusion(
        receipt.leaf_hash,
        receipt.log_index,
        checkpoint.tree_size,
        proof.hashes,
        checkpoint.root_hash,
    ):
        raise ReceiptError(
            f"the inclusion proof of log index {receipt.log_index} does not lead to the root"
            f" of the signed checkpoint of size {checkpoint.tree_size}: the log does not hold"
            " this entry there",
            "inclusion",
        )


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401, PLC0415 (optional, needed only here)
    except ImportError:
        raise ImportError(
            "verifying a receipt's checkpoint signature needs the 'cryptography' package:"
            " pip install 'exchange-client[verify]'"
        ) from None


def _claimed_index(entry: bytes) -> int | None:
    """The ``index`` the entry's own JSON states, if it states one."""
    try:
        doc = json.loads(entry)
    except ValueError:
        return None
    index = doc.get("index") if isinstance(doc, dict) else None
    return index if isinstance(index, int) and not isinstance(index, bool) else None

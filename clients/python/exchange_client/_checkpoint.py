"""Signed checkpoints of the audit log: the note format, and its verification.

A checkpoint says "the log had ``tree_size`` entries and this Merkle root" at a
time, signed with the exchange's Ed25519 key. The signed bytes (the note) are
text, in the spirit of the C2SP checkpoint format::

    <origin>\\n<tree size>\\n<base64 root hash>\\n<time, ns since the epoch>\\n

Verifying a signature needs the ``cryptography`` package
(``pip install 'exchange-client[verify]'``); everything else is the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

__all__ = ["Checkpoint", "CheckpointError", "key_id", "make_note"]


class CheckpointError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


def make_note(origin: str, tree_size: int, root_hash: bytes, at_ns: int) -> bytes:
    if "\n" in origin or not origin:
        raise ValueError("the origin is one non-empty line")
    root = base64.b64encode(root_hash).decode()
    return f"{origin}\n{tree_size}\n{root}\n{at_ns}\n".encode()


def key_id(raw_public_key: bytes) -> str:
    """First 8 bytes (hex) of SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the audit log's size and root."""

    note: bytes
    signature: bytes
    origin: str
    tree_size: int
    root_hash: bytes
    at_ns: int

    @classmethod
    def parse(cls, note: bytes, signature: bytes) -> Checkpoint:
        """The checkpoint of ``note``; CheckpointError if it is not one (the
        signature is checked by ``verify``)."""
        try:
            origin, size, root, at, end = note.decode().split("\n")
            if end or not origin:
                raise ValueError
            return cls(
                note=note,
                signature=signature,
                origin=origin,
                tree_size=int(size),
                root_hash=base64.b64decode(root, validate=True),
                at_ns=int(at),
            )
        except (UnicodeDecodeError, ValueError, binascii.Error):
            raise CheckpointError("not a checkpoint note") from None

    def verify(self, public_key_pem: str | bytes) -> None:
        """Raise CheckpointError unless the signature is the key's over the note."""
        try:
            from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
            from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
                Ed25519PublicKey,
            )
            from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
                load_pem_public_key,
            )
        except ImportError:
            raise CheckpointError(
                "verifying signatures needs the 'cryptography' package:"
                " pip install 'exchange-client[verify]'"
            ) from None
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        try:
            key = load_pem_public_key(pem)
        except ValueError:
            raise CheckpointError("the public key is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError("the public key is not an Ed25519 key")
        try:
            key.verify(self.signature, self.note)
        except InvalidSignature:
            raise CheckpointError(
                f"the signature of the checkpoint of size {self.tree_size} does not verify"
                " with this public key"
            ) from None

"""Signed checkpoints of the audit log: the note format, and its verification.

A checkpoint says "the log had ``tree_size`` entries and this Merkle root" at a
time, signed with the exchange's Ed25519 key. The signed bytes (the note) are
text, in the spirit of the C2SP checkpoint format::

    <origin>\\n<tree size>\\n<base64 root hash>\\n<time, ns since the epoch>\\n

A checkpoint is kept as one line of JSON (``to_json`` / ``from_json``): the note and
its signature in base64 (the truth), and the note's fields for reading. That is
the file ``exchange audit checkpoint`` writes and the first line of ``exchange
audit export``; a partner or auditor keeps such files to check, later, that the
log still holds what they vouch for (``verify_consistency``).

Verifying a signature needs the ``cryptography`` package
(``pip install 'exchange-client[verify]'``); everything else is the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

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

    def to_json(self) -> str:
        """One line of JSON (no newline): ``type`` ("checkpoint"), ``origin``,
        ``tree_size``, ``root_hash`` (base64), ``at`` (ISO 8601, UTC), and the signed
        ``note`` and its ``signature`` (base64), which are what ``from_json`` trusts."""
        return json.dumps(
            {
                "type": "checkpoint",
                "origin": self.origin,
                "tree_size": self.tree_size,
                "root_hash": base64.b64encode(self.root_hash).decode(),
                "at": _iso(self.at_ns),
                "note": base64.b64encode(self.note).decode(),
                "signature": base64.b64encode(self.signature).decode(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Checkpoint:
        """The checkpoint of ``to_json``'s text (its first line, so the whole of an
        ``exchange audit export`` file will do too). Other keys are ignored; the
        note's fields given beside it must agree with it. CheckpointError if it is
        not a checkpoint (the signature is checked by ``verify``)."""
        if isinstance(text, bytes):
            try:
                text = text.decode()
            except UnicodeDecodeError:
                raise CheckpointError("not a checkpoint: not UTF-8 text") from None
        first = text.lstrip().split("\n", 1)[0]
        try:
            doc = json.loads(first)
        except ValueError:
            raise CheckpointError("not a checkpoint: its first line is not JSON") from None
        if not isinstance(doc, dict) or doc.get("type", "checkpoint") != "checkpoint":
            raise CheckpointError('not a checkpoint: expected a JSON object of "type" "checkpoint"')
        try:
            note = base64.b64decode(doc["note"], validate=True)
            signature = base64.b64decode(doc["signature"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise CheckpointError(
                'not a checkpoint: expected its signed "note" and "signature" in base64'
            ) from None
        checkpoint = cls.parse(note, signature)
        said = {
            "origin": checkpoint.origin,
            "tree_size": checkpoint.tree_size,
            "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
        }
        for name, value in said.items():
            if name in doc and doc[name] != value:
                raise CheckpointError(
                    f"its {name} says {_shown(doc[name])} but its signed note says"
                    f" {_shown(value)} (edited)"
                )
        return checkpoint

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


def _iso(at_ns: int) -> str:
    try:
        at = datetime.fromtimestamp(at_ns / 1e9, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(at_ns)
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

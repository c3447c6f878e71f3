"""The exchange's Ed25519 signing key and the checkpoints it signs.

The key is a PKCS8 PEM file (``Settings.signing_key_path``), created on first
start with mode 0600. Checkpoints are notes (``exchange_protocol.checkpoint``)
signed with it; partners verify them with its public key (``public_key_pem``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from exchange_protocol.checkpoint import key_id, make_note

from exchange.errors import Unavailable
from exchange.store import SignedCheckpoint

__all__ = ["Signer"]


class Signer:
    """Signs checkpoints of the audit log with one Ed25519 key."""

    __slots__ = ("_key", "_key_id", "_public_key_pem", "path")

    def __init__(self, key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._key = key
        self.path = path
        public = key.public_key()
        self._public_key_pem = public.public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self._key_id = key_id(public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls) -> Signer:
        """A new key kept in memory only (tests, benchmarks)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The key in ``path``; Unavailable if it is missing, unreadable or not an
        Ed25519 private key."""
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise Unavailable(
                f"no audit signing key at {path}: start the server once to create it, or"
                " point audit.signing_key_file at the key"
            ) from None
        except OSError as exc:
            raise Unavailable(
                f"cannot read the audit signing key {path}: {exc.strerror or exc}"
            ) from exc
        return cls(_parse(pem, path), path)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key in ``path``, created (with its parent directories, mode 0600) when
        there is none. Unavailable if it cannot be read, written or is not an Ed25519
        private key: a damaged key is never replaced silently, since checkpoints
        already signed with it would no longer verify with the new one."""
        if path.exists():
            return cls.load(path)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        try:
            created = _create_exclusively(path, pem)
        except OSError as exc:
            raise Unavailable(
                f"cannot create the audit signing key {path}: {exc.strerror or exc}"
            ) from exc
        if not created:  # another process created it first: use that one
            return cls.load(path)
        return cls(key, path)

    @property
    def public_key_pem(self) -> str:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self._public_key_pem

    @property
    def key_id(self) -> str:
        """First 8 bytes (hex) of SHA-256 of the raw public key."""
        return self._key_id

    def sign(self, origin: str, tree_size: int, root_hash: bytes, at_ns: int) -> SignedCheckpoint:
        """The signed checkpoint of a tree of ``tree_size`` leaves with ``root_hash``."""
        note = make_note(origin, tree_size, root_hash, at_ns)
        return SignedCheckpoint(tree_size, note, self._key.sign(note))


def _parse(pem: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted key (the server has no passphrase to give).
        raise Unavailable(
            f"the audit signing key {path} is not an unencrypted PEM private key"
            " (expected an Ed25519 key in PKCS8 PEM)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise Unavailable(
            f"the audit signing key {path} is not an Ed25519 private key; checkpoints are"
            " signed with Ed25519: point audit.signing_key_file at an Ed25519 key in PKCS8"
            " PEM, or at a path where none exists yet to have one created"
        )
    return key


def _create_exclusively(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600) unless the file exists; False if it did.
    Written to a temporary file and linked into place, so that nobody ever reads a
    half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask or an old file said
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # make the new name durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True

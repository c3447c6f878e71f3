"""The backend of ``exchange audit``: one interface (``AuditBackend``), two
implementations, so that every command is written once (``exchange.cli.audit``):

- ``LocalAudit`` reads the data directory (the operator, every entry), proves with
  ``AuditLog``, verifies with ``verify_log``, and signs a new checkpoint with the
  signing key in the data directory when the log has grown (for ``export``);
- ``RemoteAudit`` goes through a server's AuditService with the partner SDK, so
  that it shows exactly what a partner's own code sees (its scope, its proofs).

Both speak the SDK's values (``AuditEntry``, ``Checkpoint``, ``VerifyResult``).

``verify`` takes the checkpoints the auditor kept (``KeptCheckpoint``): on the data
directory ``verify_log`` recomputes the root at each one's size; through a server
the SDK proves, with a consistency proof checked on this side, that the server's
latest checkpoint extends each one, and the server's ``VerifyLog`` then recomputes
that checkpoint's root from the stored entries.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from exchange_client import (
    AuditedVersion,
    AuditEntry,
    Checkpoint,
    ConsistencyError,
    ExchangeClient,
    VerifyResult,
)

from exchange import errors
from exchange.audit.entries import AuditEntry as StoredEntry
from exchange.audit.entries import AuditQuery
from exchange.audit.log import AuditLog
from exchange.audit.signer import Signer
from exchange.audit.verify import UNANCHORED, KeptCheckpoint, verify_log
from exchange.cli._options import require_store
from exchange.config import Settings
from exchange.store import open_store

__all__ = ["AuditBackend", "EntryFilter", "LocalAudit", "RemoteAudit", "read_public_key"]

T = TypeVar("T")

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries to list; empty fields match everything."""

    partner: str = ""  # the actor, or the partner concerned
    object_id: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None  # exclusive


class AuditBackend(Protocol):
    def entries(self, which: EntryFilter, *, with_proofs_at: int = 0) -> Iterator[AuditEntry]:
        """Matching entries, oldest first; with ``with_proofs_at=N`` only those of the
        tree of N entries, each with its inclusion proof in it."""
        ...

    def checkpoint(self) -> Checkpoint:
        """The latest signed checkpoint (a new one if the log has grown)."""
        ...

    def public_key(self) -> str:
        """The PEM of the key checkpoints are signed with."""
        ...

    def verify(self, kept: Sequence[KeptCheckpoint] = ()) -> VerifyResult:
        """Every hash and stored checkpoint, and that the log holds each ``kept`` one."""
        ...

    def close(self) -> None: ...


def read_public_key(path: str | Path) -> str:
    """The PEM text of a public key file; InvalidArgument if it cannot be read."""
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise errors.InvalidArgument(f"cannot read the public key {path}: {reason}") from None


# -- on the data directory -------------------------------------------------------------


class LocalAudit:
    """``AuditBackend`` on the data directory, as the operator (every entry).

    The public key is ``public_key_file``'s when given, else the signing key's in the
    data directory (a copy of the public key kept elsewhere proves more: whoever can
    edit the data directory can also replace the key there)."""

    def __init__(self, settings: Settings, public_key_file: str | None = None) -> None:
        require_store(settings, what_else="or --target to ask a running server")
        self._settings = settings
        self._public_key_file = public_key_file
        self._runner = asyncio.Runner()
        self._store = open_store(settings)
        self._signer: Signer | None = None
        self._log: AuditLog | None = None
        self._run(self._store.open())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def close(self) -> None:
        try:
            self._run(self._store.close())
        finally:
            self._runner.close()

    def _signing_key(self) -> Signer:
        if self._signer is None:
            self._signer = Signer.load(self._settings.signing_key_path)
        return self._signer

    def _audit_log(self) -> AuditLog:
        if self._log is None:
            try:
                signer: Signer | None = self._signing_key()
            except errors.Unavailable:
                signer = None  # read-only: proofs and the checkpoints already signed
            self._log = AuditLog(self._store, signer, self._settings.audit.origin)
        return self._log

    def entries(self, which: EntryFilter, *, with_proofs_at: int = 0) -> Iterator[AuditEntry]:
        query = AuditQuery(
            partner=which.partner,
            object_id=which.object_id,
            action=which.action,
            since=None if which.since is None else which.since.timestamp(),
            until=None if which.until is None else which.until.timestamp(),
            limit=_PAGE,
        )
        after = -1
        while True:
            page = self._run(self._page(query, after, with_proofs_at))
            yield from page
            if len(page) < _PAGE:
                return
            after = page[-1].index

    async def _page(self, query: AuditQuery, after: int, tree_size: int) -> list[AuditEntry]:
        """The next page (short when it is the last: indexes ascend, so entries beyond
        the tree end the listing too)."""
        try:
            stored = await self._store.audit_entries(dataclasses.replace(query, after_index=after))
        except (ValueError, KeyError):
            raise errors.ExchangeError(
                f"an audit entry after index {after + 1:,} cannot be read (its bytes are not"
                " an audit entry): run `exchange audit verify` to find it"
            ) from None
        if tree_size:
            stored = [e for e in stored if e.index < tree_size]
        out: list[AuditEntry] = []
        for entry in stored:
            proof = (
                await self._audit_log().inclusion_proof(entry.index, tree_size) if tree_size else []
            )
            out.append(_sdk_entry(entry, proof))
        return out

    def checkpoint(self) -> Checkpoint:
        log = self._audit_log()
        if log.signer is None:
            latest = self._run(self._store.latest_checkpoint())
            if latest is None or latest.tree_size != self._run(self._store.audit_size()):
                self._signing_key()  # raises, saying where the key was expected
            assert latest is not None
            signed = latest
        else:
            signed = self._run(log.checkpoint())
        return Checkpoint.parse(signed.note, signed.signature)

    def public_key(self) -> str:
        if self._public_key_file is not None:
            return read_public_key(self._public_key_file)
        return self._signing_key().public_key_pem

    def verify(self, kept: Sequence[KeptCheckpoint] = ()) -> VerifyResult:
        if self._public_key_file is not None:
            pem: str | None = read_public_key(self._public_key_file)
        elif self._settings.signing_key_path.exists():
            pem = self._signing_key().public_key_pem
        else:
            pem = None  # the hashes only; the summary says the signatures were not checked
        report = self._run(verify_log(self._store, pem, kept=kept))
        return VerifyResult(
            intact=report.intact,
            entries_checked=report.entries_checked,
            checkpoints_checked=report.checkpoints_checked,
            first_bad_index=report.first_bad_index,
            problem=report.problem,
            summary=report.summary,
        )


def _sdk_entry(entry: StoredEntry, proof: list[bytes]) -> AuditEntry:
    event = entry.event
    return AuditEntry(
        index=entry.index,
        at=datetime.fromtimestamp(event.at, tz=UTC),
        action=event.action.value,
        actor=event.actor,
        partner=event.partner,
        object_id=event.object_id,
        version=event.version,
        digest=event.digest,
        owner=event.owner,
        detail=dict(event.detail),
        data=entry.data,
        leaf_hash=entry.leaf_hash,
        inclusion_proof=proof,
        objects=[AuditedVersion(*listed) for listed in event.objects],
    )


# -- through a server ----------------------------------------------------------------------


class RemoteAudit:
    """``AuditBackend`` through a server's AuditService, as the partner whose
    credentials ``client`` holds (its scope; ``verify`` needs the ``audit`` role).
    With ``public_key_file``, ``verify`` also checks that the server signs with
    that key."""

    def __init__(self, client: ExchangeClient, public_key_file: str | None = None) -> None:
        self._client = client
        self._public_key_file = public_key_file

    def close(self) -> None:
        self._client.close()

    def entries(self, which: EntryFilter, *, with_proofs_at: int = 0) -> Iterator[AuditEntry]:
        return self._client.audit_entries(
            partner=which.partner or None,
            object_id=which.object_id or None,
            action=which.action or None,
            since=which.since,
            until=which.until,
            with_proofs_at=with_proofs_at or None,
        )

    def checkpoint(self) -> Checkpoint:
        return self._client.checkpoint()

    def public_key(self) -> str:
        return self._client.public_key()

    def verify(self, kept: Sequence[KeptCheckpoint] = ()) -> VerifyResult:
        served = self._client.public_key()
        key = served
        if self._public_key_file is not None:
            key = read_public_key(self._public_key_file)
            if _raw_key(key, self._public_key_file) != _raw_key(served, "the server's"):
                problem = (
                    f"the exchange signs its checkpoints with another key than the one in"
                    f" {self._public_key_file}"
                )
                return _not_intact(problem, f"audit log NOT verified: {problem}")
        # First the kept checkpoints: the server signs its latest one over the log as it
        # is now, and VerifyLog, asked after, recomputes that one's root from the entries.
        largest = -1
        for one in kept:
            try:
                self._client.check_consistency(one.checkpoint, key)
            except ConsistencyError as exc:
                where = f"the checkpoint you kept ({one.source}, size {one.checkpoint.tree_size:,})"
                return _not_intact(str(exc), f"audit log NOT intact: {where}: {exc}")
            largest = max(largest, one.checkpoint.tree_size)
        result = self._client.verify_log()
        if not kept or not result.intact:
            return result
        held = (
            f"holds the checkpoint you kept, of size {largest:,}"
            if len(kept) == 1
            else f"holds the {len(kept):,} checkpoints you kept, the largest of size {largest:,}"
        )
        base = result.summary.removesuffix(f"; {UNANCHORED}")
        return dataclasses.replace(result, summary=f"{base}; {held} (consistency proven)")


def _not_intact(problem: str, summary: str) -> VerifyResult:
    return VerifyResult(
        intact=False,
        entries_checked=0,
        checkpoints_checked=0,
        first_bad_index=None,
        problem=problem,
        summary=summary,
    )


def _raw_key(pem: str, what: str) -> bytes:
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise errors.InvalidArgument(f"{what} public key is not a PEM public key") from None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

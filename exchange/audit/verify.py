"""Offline verification of the audit log: re-derive every hash, check every checkpoint.

For every stored entry, in index order: the indexes run on without a gap (a deleted
entry leaves one); the leaf hash is SHA-256(0x00 || bytes); the bytes are an entry
that names its own index and the previous entry's leaf hash (an edited, moved or
reordered entry breaks that chain); the columns kept for queries say what the bytes
say. Then every kept checkpoint: its signature verifies with the exchange's public
key, its note parses and names its own size, its root is the root recomputed from
the stored leaves at that size (one pass over the log), and it is not larger than
the log (a truncated log is shorter than what was signed). An entry edited and every
hash after it recomputed passes the first checks, but not the checkpoints signed
after it.

The checkpoints kept in the store vouch only while they are there: whoever can
edit the store can also delete the newest ones with the entries they cover, or
empty both tables. Checkpoints the verifier kept itself (``KeptCheckpoint``: saved
by ``exchange audit checkpoint`` from time to time, away from the exchange) are
checked the same way, and are what detects that: the log must be at least as long
as each, and its root at that size must be theirs. Without one the report says
the check was weaker (``UNANCHORED``).

The first problem in log order is reported, with the entry it concerns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from exchange_protocol.checkpoint import Checkpoint, CheckpointError, key_id
from exchange_protocol.merkle import EMPTY_ROOT, node_hash

from exchange.audit.entries import Action
from exchange.errors import InvalidArgument
from exchange.store import AuditRow, AuditStore, SignedCheckpoint

__all__ = ["UNANCHORED", "KeptCheckpoint", "VerifyReport", "verify_log"]

# What the one-line result adds when no kept checkpoint was given (exit status 0 still).
UNANCHORED = (
    "not checked against a checkpoint you kept (--checkpoint FILE): truncation with"
    " deleted checkpoints would go unnoticed"
)

# Entries read per query; the next page is read while this one is checked.
_PAGE = 20_000
_ACTIONS = frozenset(a.value for a in Action)
# The query columns, in AuditRow order after log_index, data and leaf_hash.
_COLUMNS = ("at", "action", "actor", "partner", "object_id", "owner")


@dataclass(frozen=True)
class VerifyReport:
    intact: bool
    entries_checked: int
    checkpoints_checked: int
    # When not intact: the first entry found wrong (for a checkpoint whose root does
    # not match: the first entry it vouches for that no earlier checkpoint does; for
    # a truncated log: the first missing entry); None for a checkpoint's own problem.
    first_bad_index: int | None
    problem: str
    summary: str  # one line, as `exchange audit verify` prints it
    # Checkpoints the verifier kept whose root was compared (none given: UNANCHORED).
    kept_checked: int = 0


@dataclass(frozen=True, slots=True)
class KeptCheckpoint:
    """A checkpoint the verifier kept itself, away from the store: trusted because it
    was kept, checked with the public key like the stored ones."""

    checkpoint: Checkpoint
    source: str  # where it was kept, as the report names it (a file name)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A checkpoint still ahead of the pass: stored, or kept by the verifier."""

    tree_size: int
    parsed: Checkpoint | None  # None: its note is not a checkpoint note
    what: str  # its own problem (signature, note), or ""
    kept: str | None = None  # the source of a kept checkpoint

    def where(self) -> str:
        signed = "" if self.parsed is None else f"signed {_when(self.parsed)}"
        if self.kept is not None:
            about = ", ".join(x for x in (self.kept, f"size {self.tree_size:,}", signed) if x)
            return f"the checkpoint you kept ({about})"
        where = f"checkpoint at size {self.tree_size:,}"
        return f"{where} ({signed})" if signed else where


@dataclass(frozen=True, slots=True)
class _Problem:
    index: int | None
    where: str  # "entry 41 (submit indicator--...)", "checkpoint at size 1,000"
    what: str


async def verify_log(
    store: AuditStore,
    public_key_pem: str | None,
    *,
    start: int = 0,
    end: int | None = None,
    kept: Sequence[KeptCheckpoint] = (),
) -> VerifyReport:
    """Check entries ``start`` to ``end - 1`` (to the end of the log when None; the
    leaf hashes before ``start`` are taken as stored), every stored checkpoint and
    every ``kept`` one. ``public_key_pem`` None skips the signatures (and the
    summary says so). InvalidArgument for an impossible range or a public key that
    is not Ed25519."""
    key = _key_id(public_key_pem) if public_key_pem is not None else None
    size = await store.audit_size()
    if start < 0 or start > size:
        raise InvalidArgument(
            f"cannot verify from entry {start:,}: the audit log holds {size:,} entries"
        )
    stop = size if end is None else min(end, size)
    if stop < start:
        raise InvalidArgument(f"cannot verify entries {start:,} to {end}: the end is before")
    whole = stop == size
    checker = _Checker(await store.checkpoints(), kept, public_key_pem, key)

    problem = await _seed(store, checker, start)
    if problem is None:
        problem = await _check_entries(store, checker, start, stop)
    if problem is None:
        problem = checker.after_last(size if whole else None)
    return _report(checker, problem, start=start, stop=stop, size=size, key=key, kept=len(kept))


async def _seed(store: AuditStore, checker: _Checker, start: int) -> _Problem | None:
    """Feed the stored leaf hashes before ``start`` (checking the checkpoints they reach)."""
    problem = checker.reach(0)
    position = 0
    while problem is None and position < start:
        end = min(start, position + 10 * _PAGE)
        leaves = await store.audit_leaf_hashes(position, end)
        if len(leaves) != end - position:
            return _Problem(
                None,
                f"entries {position:,} to {end - 1:,} (before the range)",
                f"missing (deleted): only {len(leaves):,} of them are stored",
            )
        problem = await asyncio.to_thread(checker.seed, leaves)
        position = end
    return problem


async def _check_entries(
    store: AuditStore, checker: _Checker, start: int, stop: int
) -> _Problem | None:
    position = start
    while position < stop:
        # Read, then check: not at once (two threads taking turns on the GIL for each
        # row SQLite steps through are slower than one after the other).
        rows = await store.audit_rows(position, min(_PAGE, stop - position))
        if rows and rows[-1].log_index >= stop:  # a gap moved later rows into range
            rows = [r for r in rows if r.log_index < stop]
        if not rows:
            missing = checker.next_index
            return _Problem(missing, f"entry {missing:,}", "missing (deleted)")
        problem = await asyncio.to_thread(checker.check, rows)
        if problem is None:
            problem = await _check_index(store, checker)
        if problem is not None:
            return problem
        position = rows[-1].log_index + 1
    return None


async def _check_index(store: AuditStore, checker: _Checker) -> _Problem | None:
    """The objects the entries just checked list are in the index that queries by
    object use: an index row deleted would hide a delivery from "who received it"."""
    listed, checker.listed = checker.listed, []
    unindexed = await store.audit_unindexed(listed)
    if not unindexed:
        return None
    object_id, index = min(unindexed, key=lambda pair: pair[1])
    return _Problem(
        index,
        f"entry {index:,} (deliver)",
        f"the index of listed objects lacks its {object_id} (deleted: a query by that"
        " object would not find this entry)",
    )


class _Checker:
    """The state of one pass: the next index (the number of leaves seen), the previous
    leaf hash, the roots of the perfect subtrees so far (as ``RootBuilder`` keeps
    them, inlined in the hot loop) and the checkpoints still ahead."""

    def __init__(
        self,
        stored: Sequence[SignedCheckpoint],
        kept: Sequence[KeptCheckpoint],
        public_key_pem: str | None,
        key: str | None,
    ) -> None:
        self.next_index = 0
        self.previous = bytes(32)
        # Left to right; their sizes are the set bits of next_index, largest first.
        self.peaks: list[bytes] = []
        # (object id, index) of what the entries checked since the last look list:
        # each must be in the index of listed objects (_check_index).
        self.listed: list[tuple[str, int]] = []
        self.checked = 0  # stored checkpoints whose root was compared
        self.kept_checked = 0  # kept checkpoints whose root was compared
        self.kept_largest = -1  # the largest of those
        self.vouched = 0  # the size of the last checkpoint that matched
        self.latest: Checkpoint | None = None
        pending = [_stored(signed, public_key_pem) for signed in stored]
        pending += [_kept(k, public_key_pem, key) for k in kept]
        # By size, popped from the end; at one size, the kept ones first.
        pending.sort(key=lambda p: (p.tree_size, p.kept is None))
        pending.reverse()
        self.ahead = pending

    @property
    def total_checkpoints(self) -> int:
        return self.checked + sum(1 for p in self.ahead if p.kept is None)

    def next_size(self) -> int:
        return self.ahead[-1].tree_size if self.ahead else -1

    def reach(self, size: int) -> _Problem | None:
        """Check the checkpoints of ``size`` (``peaks`` holds that many leaves)."""
        while self.ahead and self.ahead[-1].tree_size == size:
            pending = self.ahead.pop()
            if pending.parsed is None or pending.what:
                return _Problem(None, pending.where(), pending.what)
            if pending.parsed.root_hash != self.root():
                changed = (
                    f"an entry from {self.vouched:,} to {size - 1:,} was changed since it"
                    " was signed (and the hashes after it recomputed)"
                )
                what = (
                    f"its root does not match the stored entries: {changed}"
                    if pending.kept is None
                    else f"entries before {size:,} differ from the checkpoint you kept: {changed}"
                )
                return _Problem(self.vouched, pending.where(), what)
            if pending.kept is None:
                self.checked += 1
                self.latest = pending.parsed
            else:
                self.kept_checked += 1
                self.kept_largest = size
            self.vouched = size
        return None

    def after_last(self, log_size: int | None) -> _Problem | None:
        """After the last entry checked: checkpoints larger than the log (when the
        range reached its end) are a truncation."""
        if log_size is None or not self.ahead:
            return None
        pending = self.ahead[-1]
        if pending.parsed is None or pending.what:
            return _Problem(None, pending.where(), pending.what)
        size = pending.tree_size
        missing = f"entries {log_size:,} to {size - 1:,} are missing (truncated)"
        what = (
            f"the log holds {log_size:,} entries, fewer than this checkpoint signed: {missing}"
            if pending.kept is None
            else f"the log holds {log_size:,} entries, fewer than the {size:,} of the"
            f" checkpoint you kept: {missing}"
        )
        return _Problem(log_size, pending.where(), what)

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        node = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            node = node_hash(peak, node)
        return node

    def _add(self, leaf: bytes) -> None:
        n = self.next_index
        while n & 1:
            leaf = node_hash(self.peaks.pop(), leaf)
            n >>= 1
        self.peaks.append(leaf)
        self.next_index += 1

    def seed(self, leaves: Sequence[bytes]) -> _Problem | None:
        for leaf in leaves:
            self._add(leaf)
            self.previous = leaf
            if self.next_size() == self.next_index:
                problem = self.reach(self.next_index)
                if problem is not None:
                    return problem
        return None

    def check(self, rows: Sequence[AuditRow]) -> _Problem | None:  # noqa: PLR0911, PLR0912 (the hot loop, inlined)
        """Check ``rows`` (the next ones, by index); the first problem, or None."""
        sha256 = hashlib.sha256
        loads = orjson.loads
        peaks = self.peaks
        expected = self.next_index
        previous = self.previous
        next_checkpoint = self.next_size()
        try:
            for row in rows:
                index, data, leaf, at, action, actor, partner, object_id, owner = row
                if index != expected:
                    what = (
                        f"missing (deleted): the log goes from entry {expected - 1:,} to {index:,}"
                        if expected
                        else f"missing (deleted): the log starts at entry {index:,}"
                    )
                    return _Problem(expected, f"entry {expected:,}", what)
                if sha256(b"\x00" + data).digest() != leaf:
                    return _entry(row, "leaf hash does not match its bytes (edited)")
                try:
                    doc = loads(data)
                    said = (
                        doc["at"],
                        doc["action"],
                        doc["actor"],
                        doc["partner"],
                        doc["object_id"],
                        doc["owner"],
                    )
                    said_index, said_previous = doc["index"], doc["prev"]
                    objects = doc.get("objects", ())
                    if (
                        doc["v"] != 1
                        or said[1] not in _ACTIONS
                        or not isinstance(doc["detail"], dict)
                        or not (objects == () or _listing(objects))
                    ):
                        raise ValueError
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    return _entry(row, "its bytes are not an audit entry")
                if said_index != index:
                    return _entry(
                        row, f"its bytes say index {said_index} (moved: entries reordered)"
                    )
                if said_previous != previous.hex():
                    return _entry(
                        row,
                        f"it does not follow entry {index - 1:,} (its previous hash is not"
                        f" that entry's leaf hash: reordered, or an entry before it replaced)"
                        if index
                        else "the first entry names a previous entry",
                    )
                if said != (at, action, actor, partner, object_id, owner):
                    return _entry(row, _column_mismatch(row, said))
                if objects:
                    self.listed += [(i, index) for i in dict.fromkeys(o[0] for o in objects)]
                # The leaf joins the perfect subtrees (RootBuilder.add, inlined).
                n, node = expected, leaf
                while n & 1:
                    node = sha256(b"\x01" + peaks.pop() + node).digest()
                    n >>= 1
                peaks.append(node)
                expected += 1
                previous = leaf
                if expected == next_checkpoint:
                    self.next_index, self.previous = expected, previous
                    problem = self.reach(expected)
                    if problem is not None:
                        return problem
                    next_checkpoint = self.next_size()
            return None
        finally:
            self.next_index, self.previous = expected, previous


def _listing(objects: object) -> bool:
    """``objects`` is what an entry's bytes may list: [id, version, digest] triples."""
    return isinstance(objects, list) and all(
        isinstance(o, list) and len(o) == 3 and all(isinstance(t, str) for t in o) for o in objects
    )


def _entry(row: AuditRow, what: str) -> _Problem:
    about = " ".join(str(x) for x in (row.action, row.object_id or row.partner) if x)
    return _Problem(row.log_index, f"entry {row.log_index:,} ({about})", what)


def _column_mismatch(row: AuditRow, said: tuple[object, ...]) -> str:
    for name, stored, value in zip(_COLUMNS, row[3:], said, strict=True):
        if stored != value:
            return f"its query column {name} is {stored!r} but its bytes say {value!r} (edited)"
    return "its query columns do not match its bytes (edited)"


def _stored(signed: SignedCheckpoint, public_key_pem: str | None) -> _Pending:
    """A stored checkpoint, parsed (None if it does not parse) with its own problem."""
    try:
        parsed = Checkpoint.parse(signed.note, signed.signature)
    except CheckpointError:
        return _Pending(signed.tree_size, None, "its note is not a checkpoint note (edited)")
    if parsed.tree_size != signed.tree_size:
        return _Pending(
            signed.tree_size, parsed, f"its note says size {parsed.tree_size:,} (edited)"
        )
    if public_key_pem is not None:
        try:
            parsed.verify(public_key_pem)
        except CheckpointError:
            return _Pending(
                signed.tree_size,
                parsed,
                "its signature does not verify with the public key (forged or edited)",
            )
    return _Pending(signed.tree_size, parsed, "")


def _kept(kept: KeptCheckpoint, public_key_pem: str | None, key: str | None) -> _Pending:
    """A kept checkpoint, with its own problem: its signature, when there is a key."""
    checkpoint = kept.checkpoint
    what = ""
    if public_key_pem is not None:
        try:
            checkpoint.verify(public_key_pem)
        except CheckpointError:
            what = (
                f"its signature does not verify with the public key (key {key}): the"
                " exchange's key was replaced since, or it is not this exchange's checkpoint"
            )
    return _Pending(checkpoint.tree_size, checkpoint, what, kept.source)


def _key_id(public_key_pem: str) -> str:
    try:
        key = load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise InvalidArgument("the public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument("the public key is not an Ed25519 key: checkpoints are Ed25519")
    return key_id(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def _when(checkpoint: Checkpoint) -> str:
    try:
        at = datetime.fromtimestamp(checkpoint.at_ns / 1e9, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"at {checkpoint.at_ns} ns"
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _report(
    checker: _Checker,
    problem: _Problem | None,
    *,
    start: int,
    stop: int,
    size: int,
    key: str | None,
    kept: int,
) -> VerifyReport:
    entries = checker.next_index - start if checker.next_index >= start else 0
    if problem is not None:
        return VerifyReport(
            intact=False,
            entries_checked=entries,
            checkpoints_checked=checker.checked,
            first_bad_index=problem.index,
            problem=problem.what,
            summary=f"audit log NOT intact: {problem.where}: {problem.what}",
            kept_checked=checker.kept_checked,
        )
    if start == 0 and stop == size:
        what = f"{entries:,} entries"
    else:
        what = f"entries {start:,} to {stop - 1:,} ({entries:,} of {size:,})"
    if checker.latest is None:
        cps = "no checkpoint yet" if not checker.total_checkpoints else "no checkpoint in range"
    else:
        cps = (
            f"{checker.checked:,} checkpoint{'s' if checker.checked != 1 else ''}, latest"
            f" signed at size {checker.latest.tree_size:,}"
        )
        cps += f" (key {key})" if key else " (signatures NOT checked: no public key given)"
    return VerifyReport(
        intact=True,
        entries_checked=entries,
        checkpoints_checked=checker.checked,
        first_bad_index=None,
        problem="",
        summary=f"audit log intact: {what}, {cps}; {_anchoring(checker, kept, key)}",
        kept_checked=checker.kept_checked,
    )


def _anchoring(checker: _Checker, kept: int, key: str | None) -> str:
    """What the one-line result says of the checkpoints the verifier kept."""
    if not kept:
        return UNANCHORED
    done = checker.kept_checked
    if done == 1:
        said = f"holds the checkpoint you kept, of size {checker.kept_largest:,}"
    elif done:
        said = (
            f"holds the {done:,} checkpoints you kept, the largest of size {checker.kept_largest:,}"
        )
    else:
        said = "no checkpoint you kept is in the range"
    if done < kept and done:
        said += f"; {kept - done:,} you kept are beyond the range (not checked)"
    if key is None and done:
        said += " (signatures NOT checked: no public key given)"
    return said

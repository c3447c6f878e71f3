"""Schema migrations of the SQLite store: a data directory of an earlier release
opens with everything it held, and a migrated file is the same as a new one."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from exchange import policy
from exchange.errors import Unavailable
from exchange.model import (
    DEFAULT_ROLES,
    Audience,
    Community,
    Credential,
    CredentialKind,
    Partner,
    PartnerKind,
    Tlp,
    ValidObject,
)
from exchange.store import CommitOutcome
from exchange.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore

# The schema of the first release, as it wrote it (no user_version). Frozen here:
# a data directory in the field looks like this whatever the code says now.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS partners (
    partner_id   TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    sector       TEXT NOT NULL,
    identity_id  TEXT NOT NULL UNIQUE,
    default_tlp  TEXT NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    token_hash   BLOB PRIMARY KEY,
    partner_id   TEXT NOT NULL REFERENCES partners(partner_id),
    created_at   REAL NOT NULL,
    revoked_at   REAL
);
CREATE TABLE IF NOT EXISTS objects (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id      TEXT NOT NULL,
    version        TEXT NOT NULL,
    version_key    TEXT NOT NULL,
    object_type    TEXT NOT NULL,
    created_by_ref TEXT NOT NULL,
    submitter      TEXT NOT NULL REFERENCES partners(partner_id),
    tlp            TEXT NOT NULL,
    labels         TEXT NOT NULL,
    revoked        INTEGER NOT NULL,
    spec_version   TEXT NOT NULL,
    accepted_at    REAL NOT NULL,
    body           BLOB NOT NULL,
    UNIQUE (object_id, version_key)
);
-- A row here means: accepted, not yet published to the bus.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY REFERENCES objects(seq)
);
-- Where the relay's last publish landed, per topic-partition: "now" for subscribers.
CREATE TABLE IF NOT EXISTS relay_positions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

IDENTITY = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
PLATFORM_IDENTITY = "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"
INDICATOR = "indicator--6bd06048-f8e8-5524-a440-95e258a3588a"
ACTIVE = hashlib.sha256(b"tix_active").digest()
REVOKED = hashlib.sha256(b"tix_revoked").digest()
BODY = b'{"type":"indicator","id":"' + INDICATOR.encode() + b'"}'


def first_release_file(path: Path, *, user_version: int = 0) -> None:
    """A data directory as the first release left it: two partners, a live and a
    revoked token, a published object and one still in the outbox."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(FIRST_RELEASE_SCHEMA)
        conn.executemany(
            "INSERT INTO partners VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                ("ngo-1", "Harbor Light", "non-profit", IDENTITY, "amber", 0, 1.0),
                ("plat-1", "Kestrel", "technology", PLATFORM_IDENTITY, "green", 1, 2.0),
            ],
        )
        conn.executemany(
            "INSERT INTO credentials VALUES (?, ?, ?, ?)",
            [(ACTIVE, "ngo-1", 3.0, None), (REVOKED, "ngo-1", 4.0, 5.0)],
        )
        conn.executemany(
            "INSERT INTO objects (object_id, version, version_key, object_type, created_by_ref,"
            " submitter, tlp, labels, revoked, spec_version, accepted_at, body)"
            " VALUES (?, ?, ?, 'indicator', ?, 'ngo-1', ?, ?, 0, '2.1', ?, ?)",
            [
                (
                    INDICATOR,
                    "2026-01-01T00:00:00Z",
                    "2026-01-01T00:00:00.000000000Z",
                    IDENTITY,
                    "amber",
                    '["trafficking:recruitment"]',
                    6.0,
                    BODY,
                ),
                (
                    INDICATOR,
                    "2026-02-01T00:00:00.000Z",
                    "2026-02-01T00:00:00.000000000Z",
                    IDENTITY,
                    "green",
                    "[]",
                    7.0,
                    BODY,
                ),
            ],
        )
        conn.execute("INSERT INTO outbox VALUES (2)")
        conn.execute("INSERT INTO relay_positions VALUES ('amber', 0, 12)")
        if user_version:
            conn.execute(f"PRAGMA user_version = {user_version:d}")
    finally:
        conn.close()


def dump(path: Path) -> tuple[int, list[tuple[object, ...]], dict[str, list[tuple[object, ...]]]]:
    """user_version, the schema, and every table's rows."""
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        ).fetchall()
        rows = {
            str(name): conn.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()  # noqa: S608
            for kind, name, _, _ in schema
            if kind == "table"
        }
        return int(version), schema, rows
    finally:
        conn.close()


@pytest.mark.parametrize("user_version", [0, 1])
async def test_a_first_release_data_directory_opens_with_all_it_held(
    tmp_path: Path, user_version: int
) -> None:
    path = tmp_path / "exchange.sqlite3"
    first_release_file(path, user_version=user_version)
    store = SqliteStore(path)
    await store.open()
    try:
        ngo = Partner(
            "ngo-1",
            "Harbor Light",
            IDENTITY,
            kind=PartnerKind.OTHER,
            sectors=("non-profit",),
            roles=DEFAULT_ROLES,
            default_tlp=Tlp.AMBER,
        )
        plat = Partner(
            "plat-1",
            "Kestrel",
            PLATFORM_IDENTITY,
            sectors=("technology",),
            default_tlp=Tlp.GREEN,
            disabled=True,
        )
        assert await store.list_partners() == [ngo, plat]
        active = Credential(
            "tok_" + ACTIVE[:5].hex(), "ngo-1", CredentialKind.TOKEN, ACTIVE, created_at=3.0
        )
        revoked = Credential(
            "tok_" + REVOKED[:5].hex(), "ngo-1", CredentialKind.TOKEN, REVOKED, 4.0, revoked_at=5.0
        )
        assert await store.credential(CredentialKind.TOKEN, ACTIVE) == (active, ngo)
        assert await store.credential(CredentialKind.TOKEN, REVOKED) == (revoked, ngo)
        assert await store.list_credentials("ngo-1") == [active, revoked]
        assert await store.list_communities() == []
        assert await store.registry_version() == 0

        # Each version keeps what its TLP allowed, from its submitter.
        [first] = await store.object_copies(INDICATOR, "2026-01-01T00:00:00.000Z")
        assert first.audience == Audience(Tlp.AMBER, "ngo-1")
        assert first.obj == ValidObject(
            INDICATOR,
            "indicator",
            "2026-01-01T00:00:00Z",
            IDENTITY,
            Tlp.AMBER,
            BODY,
            labels=("trafficking:recruitment",),
        )
        [pending] = await store.pending_outbox(10)
        assert pending.seq == 2 and pending.audience == Audience(Tlp.GREEN, "ngo-1")
        assert await store.relay_positions(["amber"]) == {("amber", 0): 12}
        assert await store.submitters_of([INDICATOR]) == {INDICATOR: frozenset({"ngo-1"})}

        # The migrated registry and objects work like new ones.
        await store.add_community(Community("gulf-ngos"))
        await store.join_community("gulf-ngos", "ngo-1")
        assert await store.registry_version() == 2
        newer = ValidObject(
            INDICATOR, "indicator", "2026-03-01T00:00:00.000Z", IDENTITY, Tlp.RED, BODY
        )
        asked = Audience(Tlp.RED, "ngo-1", recipients=frozenset({"plat-1"}))
        [done] = await store.commit_objects(ngo, [(newer, asked)], 8.0, policy.widen)
        assert done.outcome is CommitOutcome.INSERTED
        assert done.audience == Audience(Tlp.GREEN, "ngo-1", recipients=frozenset({"plat-1"}))
    finally:
        await store.close()

    # Opening again changes nothing.
    before = dump(path)
    assert before[0] == SCHEMA_VERSION
    again = SqliteStore(path)
    await again.open()
    await again.close()
    assert dump(path) == before


async def test_a_migrated_file_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    first_release_file(tmp_path / "old.sqlite3")
    for name in ("old.sqlite3", "new.sqlite3"):
        store = SqliteStore(tmp_path / name)
        await store.open()
        await store.close()
    old_version, old_schema, _ = dump(tmp_path / "old.sqlite3")
    new_version, new_schema, new_rows = dump(tmp_path / "new.sqlite3")
    assert old_version == new_version == SCHEMA_VERSION
    assert old_schema == new_schema
    assert new_rows["registry_state"] == [(1, 0)]


async def test_a_file_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1:d}")
    conn.close()
    newer = SqliteStore(path)
    with pytest.raises(Unavailable, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        await newer.open()
    await newer.close()


async def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite3"
    first_release_file(path)
    # Something in the way of the version 2 step, halfway through it.
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE credentials_v1 (x)")
    conn.close()
    before = dump(path)
    store = SqliteStore(path)
    with pytest.raises(Unavailable, match=r"cannot open the database .*credentials_v1"):
        await store.open()
    await store.close()
    assert dump(path) == before


# -- version 4 to 5: observables held per submitter -------------------------------------------

EMAIL = "email-addr--5c6c0e3a-8a0c-5f8b-9d5c-4b2f7d1c2e10"
SIGHTING = "sighting--50b13f1c-307d-5db3-83b1-125a1e79b9ea"


def version_4_file(path: Path) -> None:
    """A data directory as a release with schema version 4 left it: partners, an
    indicator in two versions, an observable, outbox rows, relay positions, audit
    entries, a checkpoint, and an AUTOINCREMENT counter above the highest seq (a
    version that was stored, then rolled away by hand)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for step in MIGRATIONS[:4]:
            step.apply(conn)
        conn.execute("PRAGMA user_version = 4")
        conn.executemany(
            "INSERT INTO partners (partner_id, name, identity_id, default_tlp, disabled,"
            " created_at, kind, sectors, roles) VALUES (?, ?, ?, 'green', 0, ?, 'ngo',"
            " '[]', '[\"submit\",\"subscribe\"]')",
            [
                ("ngo-1", "Harbor Light", IDENTITY, 1.0),
                ("plat-1", "Kestrel", PLATFORM_IDENTITY, 2.0),
            ],
        )
        audience = (
            '{"tlp":"green","submitter":"%s","communities":[],"recipients":[],"excluded_kinds":[]}'
        )
        conn.executemany(
            "INSERT INTO objects (seq, object_id, version, version_key, object_type,"
            " created_by_ref, submitter, tlp, labels, revoked, spec_version, accepted_at, body,"
            " audience) VALUES (?, ?, ?, ?, ?, ?, ?, 'green', '[]', 0, '2.1', ?, ?, ?)",
            [
                (1, INDICATOR, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000000000Z",
                 "indicator", IDENTITY, "ngo-1", 6.0, BODY, audience % "ngo-1"),
                (2, INDICATOR, "2026-02-01T00:00:00.000Z", "2026-02-01T00:00:00.000000000Z",
                 "indicator", IDENTITY, "ngo-1", 7.0, BODY, audience % "ngo-1"),
                (3, EMAIL, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000000000Z",
                 "email-addr", PLATFORM_IDENTITY, "plat-1", 8.0, b"{}", audience % "plat-1"),
                (4, SIGHTING, "2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00.000000000Z",
                 "sighting", PLATFORM_IDENTITY, "plat-1", 8.5,
                 b'{"id":"%s","sighting_of_ref":"%s"}' % (SIGHTING.encode(), INDICATOR.encode()),
                 audience % "plat-1"),
            ],
        )  # fmt: skip
        conn.execute("UPDATE sqlite_sequence SET seq = 10 WHERE name = 'objects'")
        conn.executemany("INSERT INTO outbox (seq) VALUES (?)", [(2,), (3,)])
        conn.execute("INSERT INTO relay_positions VALUES ('green', 0, 12)")
        conn.execute(
            "INSERT INTO audit VALUES (0, 6.0, 'submit', 'ngo-1', '', ?, 'ngo-1', x'7b7d', x'00')",
            (INDICATOR,),
        )
        conn.execute("INSERT INTO audit_checkpoints VALUES (1, x'6e6f7465', x'736967')")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_version_4_data_directory_migrates_with_its_data_intact(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite3"
    version_4_file(path)
    version, _, before = dump(path)
    assert version == 4
    store = SqliteStore(path)
    await store.open()
    try:
        version, _, after = dump(path)
        assert version == SCHEMA_VERSION == 7
        # Every row of every table is kept as it was (objects with their seqs; version 7
        # adds erased_at, last, NULL: none was erased).
        assert all(row[-1] is None for row in after["objects"])
        after["objects"] = [row[:-1] for row in after["objects"]]
        assert {name: rows for name, rows in after.items() if name in before} == before
        assert after["set_aside"] == after["store_probe"] == after["audit_objects"] == []
        assert after["erasures"] == []
        # Version 7 found what refers to what among the objects held.
        assert after["object_refs"] == [(INDICATOR, 4)]
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()

        assert [p.seq for p in await store.pending_outbox(10)] == [2, 3]
        assert await store.submitters_of([EMAIL]) == {EMAIL: frozenset({"plat-1"})}
        # Version 5 at work: another partner holds its own copy of the observable (it
        # was refused as another's object before), numbered after every seq used.
        ngo = Partner("ngo-1", "Harbor Light", IDENTITY, kind=PartnerKind.NGO)
        email = ValidObject(
            EMAIL, "email-addr", "2026-01-01T00:00:00.000Z", IDENTITY, Tlp.GREEN, b"{}"
        )
        [done] = await store.commit_objects(
            ngo, [(email, Audience(Tlp.GREEN, "ngo-1"))], 9.0, policy.widen
        )
        assert done.outcome is CommitOutcome.INSERTED
        assert [p.seq for p in await store.pending_outbox(10)] == [2, 3, 11]
        assert [c.submitter for c in await store.object_copies(EMAIL)] == ["plat-1", "ngo-1"]
        # ...and an indicator keeps its one creator.
        hijack = ValidObject(
            INDICATOR, "indicator", "2026-03-01T00:00:00.000Z", PLATFORM_IDENTITY, Tlp.GREEN, BODY
        )
        plat = Partner("plat-1", "Kestrel", PLATFORM_IDENTITY)
        [refused] = await store.commit_objects(
            plat, [(hijack, Audience(Tlp.GREEN, "plat-1"))], 9.0, policy.widen
        )
        assert refused.outcome is CommitOutcome.NOT_CREATOR
    finally:
        await store.close()

"""The operator's commands (``exchange partner|community|token``) through the
installed ``exchange`` command: on a data directory, and through a running
server's AdminService with an admin partner's token."""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certs import CertificateAuthority
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import free_port


def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``exchange ARGS`` and check its exit code."""
    proc = subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != code:
        raise AssertionError(
            f"exchange {' '.join(args)} -> {proc.returncode} (expected {code}):"
            f"\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def one(*args: str) -> dict[str, Any]:
    """Run with --json and read the one JSON object printed."""
    lines = run(*args, "--json").stdout.splitlines()
    assert len(lines) == 1, lines
    doc = orjson.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


def many(*args: str) -> list[dict[str, Any]]:
    """Run with --json and read one JSON object per line."""
    return [orjson.loads(line) for line in run(*args, "--json").stdout.splitlines()]


def failure(*args: str, code: int = 1) -> str:
    """Run a command that must fail; return its stderr (one line for exit 1)."""
    proc = run(*args, code=code)
    assert proc.stdout == ""
    if code == 1:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("exchange: "), proc.stderr
    return proc.stderr


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory holding a store, as `exchange serve` or `db migrate` leaves it."""
    path = tmp_path / "data"
    run("db", "migrate", "--data-dir", str(path))
    return path


def add_partner(where: list[str], name: str, *extra: str) -> dict[str, str]:
    doc = one("partner", "add", "--name", name, *extra, *where)
    # The shape scripts rely on: exactly these three keys.
    assert set(doc) == {"partner_id", "identity_id", "token"}
    assert doc["token"].startswith("tix_")
    return {str(k): str(v) for k, v in doc.items()}


# -- on the data directory -------------------------------------------------------------------


def test_communities_on_the_data_directory(data: Path) -> None:
    where = ["--data-dir", str(data)]
    added = one("community", "add", "sea-taskforce", "--description", "South-East Asia", *where)
    assert added == {"name": "sea-taskforce", "description": "South-East Asia", "members": []}
    run("community", "add", "gulf-ngos", *where)
    ngo = add_partner(where, "Harbor Light Alliance", "--sector", "non-profit")
    platform = add_partner(where, "Kestrel Social", "--sector", "technology")

    joined = one("community", "join", "sea-taskforce", "--partner", platform["partner_id"], *where)
    assert joined["members"] == [platform["partner_id"]]
    joined = one("community", "join", "sea-taskforce", "--partner", ngo["partner_id"], *where)
    assert joined["members"] == sorted([ngo["partner_id"], platform["partner_id"]])
    assert many("community", "list", *where) == [
        {"name": "gulf-ngos", "description": "", "members": []},
        {
            "name": "sea-taskforce",
            "description": "South-East Asia",
            "members": sorted([ngo["partner_id"], platform["partner_id"]]),
        },
    ]
    shown = one("partner", "show", ngo["partner_id"], *where)
    assert shown["communities"] == ["sea-taskforce"]

    left = one("community", "leave", "sea-taskforce", "--partner", ngo["partner_id"], *where)
    assert left["members"] == [platform["partner_id"]]
    text = run("community", "list", *where).stdout.splitlines()
    assert text[0].split() == ["NAME", "MEMBERS", "DESCRIPTION"]
    assert text[2].split()[:2] == ["sea-taskforce", platform["partner_id"]]
    # Every column starts at the same place on every line.
    column = text[0].index("MEMBERS")
    assert text[1][column:].startswith("-")
    assert text[2][column:].startswith(platform["partner_id"])

    assert "is not a member of community 'sea-taskforce'" in failure(
        "community", "leave", "sea-taskforce", "--partner", ngo["partner_id"], *where
    )
    assert "unknown community 'nowhere'" in failure(
        "community", "join", "nowhere", "--partner", ngo["partner_id"], *where
    )
    assert "unknown partner 'nobody-000000'" in failure(
        "community", "join", "sea-taskforce", "--partner", "nobody-000000", *where
    )
    assert "expected 1-63 lower-case letters, digits and '-'" in failure(
        "community", "add", "Sea Taskforce", *where
    )
    assert "sea-taskforce" in failure("community", "add", "sea-taskforce", *where)
    assert "Missing option '--partner'" in failure(
        "community", "join", "sea-taskforce", *where, code=2
    )


def test_partner_lifecycle_on_the_data_directory(data: Path) -> None:
    where = ["--data-dir", str(data)]
    run("community", "add", "sea-taskforce", *where)
    new = add_partner(
        where,
        "Kestrel Social",
        "--kind",
        "tech",
        "--sector",
        "technology",
        "--sector",
        "communications",
        "--role",
        "submit",
        "--role",
        "audit",
        "--community",
        "sea-taskforce",
        "--default-tlp",
        "TLP:GREEN",
    )
    pid = new["partner_id"]
    assert pid.startswith("kestrel-social-")
    assert one("partner", "show", pid, *where) == {
        "partner_id": pid,
        "name": "Kestrel Social",
        "identity_id": new["identity_id"],
        "kind": "tech",
        "sectors": ["technology", "communications"],
        "roles": ["audit", "submit"],
        "communities": ["sea-taskforce"],
        "default_tlp": "green",
        "disabled": False,
    }
    text = run("partner", "show", pid, *where).stdout
    assert "kind:        tech" in text and "status:      enabled" in text

    updated = one(
        "partner",
        "update",
        pid,
        "--name",
        "Kestrel Social Ltd",
        "--kind",
        "ngo",
        "--sector",
        "non-profit",
        "--role",
        "subscribe",
        "--default-tlp",
        "amber",
        *where,
    )
    assert updated["name"] == "Kestrel Social Ltd"
    assert (updated["kind"], updated["sectors"], updated["roles"], updated["default_tlp"]) == (
        "ngo",
        ["non-profit"],
        ["subscribe"],
        "amber",
    )
    assert updated["communities"] == ["sea-taskforce"]  # memberships stay

    assert one("partner", "disable", pid, *where)["disabled"] is True
    assert one("partner", "show", pid, *where)["disabled"] is True
    assert one("partner", "update", pid, "--enable", *where)["disabled"] is False

    other = add_partner(where, "Harbor Light", "--sector", "non-profit")
    listed = many("partner", "list", *where)
    assert [p["partner_id"] for p in listed] == [pid, other["partner_id"]]
    assert listed[1]["kind"] == "other" and listed[1]["roles"] == ["submit", "subscribe"]
    table = run("partner", "list", *where).stdout.splitlines()
    assert table[0].split() == [
        "PARTNER",
        "ID",
        "KIND",
        "ROLES",
        "TLP",
        "STATUS",
        "SECTORS",
        "NAME",
    ]
    assert len(table) == 3 and table[1].startswith(pid)
    assert table[0].index("NAME") == table[1].index("Kestrel Social Ltd")

    # Errors: one line naming what was wrong and what is expected.
    assert "nothing to change" in failure("partner", "update", pid, *where)
    assert "unknown partner 'nobody-000000'" in failure("partner", "show", "nobody-000000", *where)
    assert "'shelter' is not a STIX industry-sector-ov word" in failure(
        "partner", "add", "--name", "X", "--sector", "shelter", *where
    )
    assert "expected identity--UUID" in failure(
        "partner", "add", "--name", "X", "--sector", "non-profit", "--identity-id", "me", *where
    )
    assert "already registered" in failure(
        "partner",
        "add",
        "--name",
        "X",
        "--sector",
        "non-profit",
        "--identity-id",
        new["identity_id"],
        *where,
    )
    assert "unknown community 'nowhere'" in failure(
        "partner", "add", "--name", "X", "--sector", "non-profit", "--community", "nowhere", *where
    )
    # Usage errors exit 2.
    failure(
        "partner",
        "add",
        "--name",
        "X",
        "--sector",
        "non-profit",
        "--kind",
        "charity",
        *where,
        code=2,
    )
    failure(
        "partner", "add", "--name", "X", "--sector", "non-profit", "--role", "boss", *where, code=2
    )
    failure(
        "partner",
        "add",
        "--name",
        "X",
        "--sector",
        "non-profit",
        "--default-tlp",
        "blue",
        *where,
        code=2,
    )
    failure("partner", "add", "--name", "X", *where, code=2)
    failure("partner", "list", "--token", "tix_x", *where, code=2)
    assert len(many("partner", "list", *where)) == 2


def test_tokens_on_the_data_directory(data: Path, tmp_path: Path) -> None:
    where = ["--data-dir", str(data)]
    partner = add_partner(where, "Kestrel Social", "--sector", "technology")
    pid = partner["partner_id"]
    issued = one("token", "issue", pid, "--expires", "90d", *where)
    assert set(issued) == {"partner_id", "credential_id", "token", "expires_at"}
    assert issued["partner_id"] == pid and issued["token"].startswith("tix_")
    assert issued["token"] != partner["token"]
    expires = datetime.datetime.fromisoformat(issued["expires_at"])
    in_90_days = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=90)
    assert abs((expires - in_90_days).total_seconds()) < 120

    credentials = many("token", "list", pid, *where)
    assert [c["credential_id"] for c in credentials][1] == issued["credential_id"]
    assert [c["status"] for c in credentials] == ["active", "active"]
    assert [c["kind"] for c in credentials] == ["token", "token"]
    assert credentials[0]["expires_at"] is None
    assert all(c["fingerprint"] is None for c in credentials)
    # Secrets are never listed.
    listing = run("token", "list", pid, *where).stdout
    assert partner["token"] not in listing and issued["token"] not in listing

    first = credentials[0]["credential_id"]
    revoked = one("token", "revoke", pid, first, *where)
    assert revoked["credential_id"] == first and revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    statuses = {c["credential_id"]: c["status"] for c in many("token", "list", pid, *where)}
    assert statuses == {first: "revoked", issued["credential_id"]: "active"}

    cert_file = CertificateAuthority(tmp_path / "pki").issue("kestrel-client").cert
    pem = cert_file.read_bytes()
    bound = one("token", "bind-cert", pid, str(cert_file), "--expires", "2w", *where)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert bound["kind"] == "certificate"
    assert bound["fingerprint"] == hashlib.sha256(der).hexdigest()
    assert bound["expires_at"] is not None
    assert len(many("token", "list", pid, *where)) == 3

    not_pem = tmp_path / "not-a-cert.pem"
    not_pem.write_text("hello")
    assert "not a PEM certificate" in failure("token", "bind-cert", pid, str(not_pem), *where)
    assert "tok_0000000000" in failure("token", "revoke", pid, "tok_0000000000", *where)
    assert "unknown partner" in failure("token", "issue", "nobody-000000", *where)
    assert "unknown partner" in failure("token", "list", "nobody-000000", *where)
    assert "e.g. 90d" in failure("token", "issue", pid, "--expires", "soon", *where, code=2)


# -- through a running server ------------------------------------------------------------


def test_a_directory_without_a_store_is_refused_unless_init(tmp_path: Path) -> None:
    """`cd ~ && exchange partner add ...` must not create a second, empty exchange
    whose token the running server does not know: it names where it looked."""
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    proc = subprocess.run(
        [EXCHANGE, "partner", "add", "--name", "X", "--sector", "non-profit"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.count("\n") == 1
    assert f"no exchange store in {elsewhere / 'exchange-data'}" in proc.stderr
    assert "--init" in proc.stderr
    assert list(elsewhere.iterdir()) == []
    missing = tmp_path / "typo"
    for command in (["community", "list"], ["token", "list", "x-000000"], ["audit", "verify"]):
        assert str(missing) in failure(*command, "--data-dir", str(missing))
    assert not missing.exists()
    # Asked to, it creates one.
    assert one("community", "add", "sea-taskforce", "--data-dir", str(missing), "--init")
    assert (missing / "exchange.sqlite3").is_file()
    assert [c["name"] for c in many("community", "list", "--data-dir", str(missing))] == [
        "sea-taskforce"
    ]
    stderr = failure("community", "list", "--target", "127.0.0.1:1", "--init", code=2)
    assert "--init are for working on the store directly" in stderr


def test_a_new_token_can_go_to_a_file_only_its_owner_reads(data: Path, tmp_path: Path) -> None:
    where = ["--data-dir", str(data)]
    token_file = tmp_path / "ngo.token"
    proc = run(
        "partner", "add", "--name", "Harbor Light", "--sector", "non-profit",
        "--token-out", str(token_file), "--quiet", *where,
    )  # fmt: skip
    partner_id = proc.stdout.strip()
    assert partner_id.startswith("harbor-light-")
    assert "tix_" not in proc.stdout + proc.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("tix_")
    # Never overwritten, and nothing is registered when the file cannot be written.
    before = many("partner", "list", *where)
    stderr = run(
        "partner", "add", "--name", "Y", "--sector", "non-profit",
        "--token-out", str(token_file), *where, code=2,
    ).stderr  # fmt: skip
    assert "exists; a token file is never overwritten" in stderr
    assert token_file.read_text().strip() == token
    assert many("partner", "list", *where) == before
    # --quiet alone would lose the token.
    stderr = run("token", "issue", partner_id, "--quiet", *where, code=2).stderr
    assert "--token-out" in stderr
    second = tmp_path / "second.token"
    issued = one("token", "issue", partner_id, "--token-out", str(second), *where)
    assert issued["token_file"] == str(second) and "token" not in issued
    listed = {c["credential_id"] for c in many("token", "list", partner_id, *where)}
    assert issued["credential_id"] in listed


@pytest.fixture
def server(data: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(data)
    yield srv
    srv.stop()


def test_through_the_server(data: Path, server: ServerProcess) -> None:
    local = ["--data-dir", str(data)]
    # The first admin is made on the data directory, while the server runs.
    admin = add_partner(local, "Exchange Operations", "--sector", "non-profit", "--role", "admin")
    remote = ["--target", server.target, "--token", admin["token"]]

    assert one("community", "add", "sea-taskforce", "--description", "SEA", *remote)["name"] == (
        "sea-taskforce"
    )
    ngo = add_partner(
        remote,
        "Harbor Light",
        "--kind",
        "ngo",
        "--sector",
        "non-profit",
        "--community",
        "sea-taskforce",
    )
    pid = ngo["partner_id"]
    shown = one("partner", "show", pid, *remote)
    assert (shown["kind"], shown["communities"], shown["roles"]) == (
        "ngo",
        ["sea-taskforce"],
        ["submit", "subscribe"],
    )
    # What the server changed is on the data directory too.
    assert one("partner", "show", pid, *local) == shown
    assert [p["partner_id"] for p in many("partner", "list", *remote)] == [
        admin["partner_id"],
        pid,
    ]

    updated = one("partner", "update", pid, "--default-tlp", "green", "--role", "submit", *remote)
    assert (updated["default_tlp"], updated["roles"]) == ("green", ["submit"])
    assert one("community", "leave", "sea-taskforce", "--partner", pid, *remote)["members"] == []
    joined = one("community", "join", "sea-taskforce", "--partner", pid, *remote)
    assert joined["members"] == [pid]
    assert many("community", "list", *remote) == [
        {"name": "sea-taskforce", "description": "SEA", "members": [pid]}
    ]

    issued = one("token", "issue", pid, "--expires", "12h", *remote)
    assert issued["token"].startswith("tix_") and issued["expires_at"] is not None
    credentials = many("token", "list", pid, *remote)
    assert [c["status"] for c in credentials] == ["active", "active"]
    assert one("token", "revoke", pid, issued["credential_id"], *remote)["status"] == "revoked"
    statuses = [c["status"] for c in many("token", "list", pid, *local)]
    assert statuses == ["active", "revoked"]

    # A partner without the admin role is refused, naming the role.
    refused = failure("partner", "list", "--target", server.target, "--token", ngo["token"])
    assert "permission denied" in refused and "'admin' role" in refused
    # A revoked token no longer signs in.
    refused = failure("partner", "list", "--target", server.target, "--token", issued["token"])
    assert "authentication failed" in refused and "revoked" in refused
    assert "authentication failed" in failure(
        "partner", "list", "--target", server.target, "--token", "tix_unknown"
    )
    # The server checks input as the data directory does.
    assert "'shelter' is not a STIX industry-sector-ov word" in failure(
        "partner", "add", "--name", "X", "--sector", "shelter", *remote
    )
    assert "unknown partner 'nobody-000000'" in failure("partner", "show", "nobody-000000", *remote)
    assert "nothing to change" in failure("partner", "update", pid, *remote)

    # Disabling through the server stops the partner at once.
    assert one("partner", "disable", pid, *remote)["disabled"] is True
    admin_token = one("token", "issue", pid, *remote)["token"]
    one("partner", "update", pid, "--role", "admin", *remote)
    assert "disabled" in failure(
        "partner", "list", "--target", server.target, "--token", admin_token
    )
    assert one("partner", "update", pid, "--enable", *remote)["disabled"] is False
    assert len(many("partner", "list", "--target", server.target, "--token", admin_token)) == 2

    # Without a token there is nothing to send.
    assert "no API token" in failure("partner", "list", "--target", server.target, "--token", "")
    assert "--data-dir" in failure("partner", "list", *remote, *local, code=2)


def test_unreachable_server() -> None:
    target = f"127.0.0.1:{free_port()}"
    assert f"cannot reach the exchange at {target}" in failure(
        "community", "list", "--target", target, "--token", "tix_x"
    )

"""The SDK's distribution and the server's install and uninstall independently, in a
fresh virtual environment, from wheels built from this checkout (dependencies come from
the package index configured for pip, as for a partner)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # Away from the checkout, whose packages `python -c` would otherwise import.
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd="/",
    )


def ok(*args: str | Path) -> str:
    result = run(*args)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def wheel(source: Path, out: Path) -> Path:
    ok(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
       "-w", out, source)  # fmt: skip
    (built,) = out.glob("*.whl")
    return built


def test_the_sdk_and_the_server_install_and_uninstall_independently(tmp_path: Path) -> None:
    client_wheel = wheel(ROOT / "clients" / "python", tmp_path / "client")
    server_wheel = wheel(ROOT, tmp_path / "server")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    pip = (python, "-m", "pip", "--disable-pip-version-check")
    imports = "import importlib.util as u; print([bool(u.find_spec(m)) for m in {}])"

    # A partner installs the SDK alone: no server code comes with it.
    ok(*pip, "install", "-q", client_wheel)
    found = ok(python, "-c", imports.format(["exchange_client", "exchange_protocol", "exchange"]))
    assert found.strip() == "[True, True, False]"
    # The shared primitives load without grpc.
    no_grpc = (
        "import sys, exchange_protocol.merkle, exchange_protocol.checkpoint, "
        "exchange_protocol.pb.exchange_pb2; assert 'grpc' not in sys.modules"
    )
    ok(python, "-c", no_grpc)

    # The server on top takes the SDK's distribution as its dependency, not a copy.
    ok(*pip, "install", "-q", server_wheel)
    assert "exchange serve" in ok(tmp_path / "venv" / "bin" / "exchange", "--help")
    owners = ok(*pip, "show", "-f", "trafficking-indicator-exchange")
    assert "exchange_client/" not in owners and "exchange_protocol/" not in owners
    # The core below the transport loads no grpc (tests/unit/test_layering.py has the rules).
    core = "exchange.store, exchange.store.sqlite, exchange.ingest, exchange.relay"
    ok(python, "-c", f"import sys, {core}; assert 'grpc' not in sys.modules, sorted(sys.modules)")

    # Removing the server leaves the SDK whole.
    ok(*pip, "uninstall", "-y", "-q", "trafficking-indicator-exchange")
    found = ok(python, "-c", imports.format(["exchange_client", "exchange_protocol", "exchange"]))
    assert found.strip() == "[True, True, False]"
    ok(python, "-c", "from exchange_client import ExchangeClient, verify_receipt")

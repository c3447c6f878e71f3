"""The SDK's public surface: __all__ is exact, and importing it stays light."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import exchange_client

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python"


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(exchange_client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(exchange_client.__all__) == public
    assert len(exchange_client.__all__) == len(set(exchange_client.__all__))


def test_every_exported_name_exists() -> None:
    for name in exchange_client.__all__:
        assert hasattr(exchange_client, name), name


def test_fixed_surface_is_exported() -> None:
    expected = {
        "ExchangeClient",
        "ExchangeError",
        "AuthenticationError",
        "PermissionDenied",
        "ValidationError",
        "NotFound",
        "RateLimited",
        "Unavailable",
        "SubmitResult",
        "RejectedObject",
        "ObjectResult",
        "Delivery",
        "Subscription",
        "PartnerKind",
        # The audit log: receipts, proofs, checkpoints, offline verification.
        "AuditEntry",
        "Checkpoint",
        "InclusionProof",
        "Receipt",
        "ReceiptError",
        "VerifyResult",
        "verify_receipt",
    }
    assert expected <= set(exchange_client.__all__)
    assert issubclass(exchange_client.ReceiptError, ValueError)


def test_error_tree() -> None:
    for name in (
        "AuthenticationError",
        "PermissionDenied",
        "ValidationError",
        "NotFound",
        "RateLimited",
        "Unavailable",
    ):
        assert issubclass(getattr(exchange_client, name), exchange_client.ExchangeError), name
    assert issubclass(exchange_client.ExchangeError, Exception)


def test_client_signatures() -> None:
    client = exchange_client.ExchangeClient
    assert list(inspect.signature(client).parameters)[:2] == ["target", "token"]
    subscribe = inspect.signature(client.subscribe).parameters
    assert list(subscribe)[1:5] == ["types", "labels", "cursor", "from_beginning"]
    assert "timeout" in inspect.signature(client.submit).parameters
    audience = ["communities", "recipients", "exclude_kinds", "timeout"]
    for method in (client.submit, client.submit_stream):
        parameters = inspect.signature(method).parameters
        assert list(parameters)[2:] == audience, method.__name__
        assert all(parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in audience)
    get = inspect.signature(client.get).parameters
    assert list(get) == ["self", "object_id", "version", "timeout"]
    assert get["version"].kind is inspect.Parameter.KEYWORD_ONLY
    init = inspect.signature(client).parameters
    for name in ("ca_file", "cert_file", "key_file"):
        assert init[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert init[name].default is None


def test_audit_signatures() -> None:
    client = exchange_client.ExchangeClient
    entries = inspect.signature(client.audit_entries).parameters
    names = ["partner", "object_id", "action", "since", "until", "page_size", "with_proofs_at"]
    assert list(entries)[1:8] == names
    assert all(entries[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)
    assert all(entries[n].default is None for n in names)
    assert list(inspect.signature(client.inclusion_proof).parameters)[1:3] == [
        "log_index",
        "tree_size",
    ]
    assert list(inspect.signature(client.consistency_proof).parameters)[1:3] == [
        "first",
        "second",
    ]
    assert list(inspect.signature(client.verify_log).parameters)[1:3] == ["start", "end"]
    for method in ("checkpoint", "public_key"):
        assert "timeout" in inspect.signature(getattr(client, method)).parameters
    verify = inspect.signature(exchange_client.verify_receipt).parameters
    assert list(verify) == ["receipt", "proof", "checkpoint", "public_key_pem"]


def test_partner_kinds_are_plain_strings() -> None:
    kind = exchange_client.PartnerKind
    assert kind("government") is kind.GOVERNMENT
    assert str(kind.NGO) == "ngo"
    assert {k.value for k in kind} == {"ngo", "tech", "government", "intergovernmental", "other"}


def test_sdk_is_typed() -> None:
    assert (SDK / "exchange_client" / "py.typed").exists()


def _modules_after(code: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SDK)])
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def test_import_does_not_pull_optional_or_server_packages() -> None:
    loaded = _modules_after(
        "import exchange_client\n"
        "from exchange_client._bundle import encode_bundle\n"
        "encode_bundle({'type': 'bundle', 'objects': []})\n"
        "exchange_client.ExchangeClient(target='127.0.0.1:9', token='t').close()"
    )
    assert "exchange_client" in loaded
    forbidden_modules = ("stix2", "aiokafka", "exchange", "orjson", "msgspec", "click", "rich")
    # cryptography is optional (the [verify] extra), imported only to check a signature.
    for forbidden in (*forbidden_modules, "cryptography"):
        assert not any(m == forbidden or m.startswith(forbidden + ".") for m in loaded), forbidden

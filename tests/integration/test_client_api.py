"""The SDK's public surface: __all__ is exact, and importing it stays light."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import exchange_client

from exchange.model import Tlp
from exchange.stix.tlp import marking_id

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


# -- the whole surface: modules, both clients -------------------------------------------

# The modules whose ``__all__`` is public API (the others are the clients' internals).
API_MODULES = ("_aio", "_client", "_errors", "_models", "_objects", "_receipts")


def test_every_public_name_of_the_api_modules_is_exported() -> None:
    for module_name in API_MODULES:
        module = importlib.import_module(f"exchange_client.{module_name}")
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name} does not exist"
            assert name in exchange_client.__all__, f"{module_name}.{name} is not exported"
            assert getattr(exchange_client, name) is getattr(module, name), name


def test_new_surface_is_exported() -> None:
    expected = {
        "AsyncExchangeClient",
        "AsyncSubscription",
        "SubmitProgress",
        "SubmitSummary",
        "BatchError",
        "TLP_CLEAR",
        "TLP_GREEN",
        "TLP_AMBER",
        "TLP_AMBER_STRICT",
        "TLP_RED",
    }
    assert expected <= set(exchange_client.__all__)


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_async_client_has_the_same_constructor_and_methods() -> None:
    sync, aio = exchange_client.ExchangeClient, exchange_client.AsyncExchangeClient
    assert inspect.signature(sync) == inspect.signature(aio)
    sync_methods, async_methods = _public_methods(sync), _public_methods(aio)
    assert set(sync_methods) == set(async_methods)
    for name, signature in sync_methods.items():
        assert list(signature.parameters.values()) == list(
            async_methods[name].parameters.values()
        ), name
    coroutines = {n for n, m in vars(aio).items() if inspect.iscoroutinefunction(m)}
    assert coroutines >= {"submit", "submit_many", "get", "revoke", "report_sighting", "close"}
    assert not inspect.iscoroutinefunction(aio.subscribe)  # returns an async iterator
    for cls in (sync, aio):
        assert hasattr(cls, "__enter__" if cls is sync else "__aenter__")


def test_new_method_signatures() -> None:
    client = exchange_client.ExchangeClient
    many = inspect.signature(client.submit_many).parameters
    assert list(many)[:2] == ["self", "objects"]
    assert many["batch_size"].default == 500
    for name in ("batch_size", "communities", "recipients", "exclude_kinds", "on_progress"):
        assert many[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    subscribe = inspect.signature(client.subscribe).parameters
    assert subscribe["reconnect"].default is True
    assert subscribe["max_backoff"].default == 30.0
    assert subscribe["on_reconnect"].default is None
    revoke = inspect.signature(client.revoke).parameters
    assert list(revoke) == ["self", "object_id", "timeout"]
    sighting = inspect.signature(client.report_sighting).parameters
    assert list(sighting)[1] == "indicator_id"
    assert sighting["count"].default == 1 and sighting["tlp"].default == "amber"
    for name in ("first_seen", "last_seen", "communities", "recipients", "description"):
        assert sighting[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    # Every call takes a deadline.
    for name, signature in _public_methods(client).items():
        if name not in {"close"}:
            assert "timeout" in signature.parameters, name


def test_tlp_ids_are_the_exchanges() -> None:
    assert marking_id(Tlp.CLEAR) == exchange_client.TLP_CLEAR
    assert marking_id(Tlp.GREEN) == exchange_client.TLP_GREEN
    assert marking_id(Tlp.AMBER) == exchange_client.TLP_AMBER
    assert marking_id(Tlp.AMBER_STRICT) == exchange_client.TLP_AMBER_STRICT
    assert marking_id(Tlp.RED) == exchange_client.TLP_RED


def test_sdk_declares_only_grpcio_and_protobuf() -> None:
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert names == {"grpcio", "protobuf"}


def test_readme_examples_are_valid_python() -> None:
    readme = (SDK / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 10
    for block in blocks:
        ast.parse(block)
    for name in (
        "submit_many",
        "AsyncExchangeClient",
        "on_reconnect",
        "revoke(",
        "report_sighting",
    ):
        assert name in readme, name

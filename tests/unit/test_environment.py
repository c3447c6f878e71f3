"""tests/environment.py: the session runs without the developer's EXCHANGE_* settings
(tests/integration/test_environment_isolation.py runs this file with some set)."""

from __future__ import annotations

import os

import pytest

from tests import environment
from tests.environment import drop_exchange_settings, header, knob


def test_exchange_settings_are_dropped_and_named() -> None:
    environ = {
        "EXCHANGE_DATABASE": "postgresql://elsewhere/db",
        "EXCHANGE_KAFKA__BOOTSTRAP": "broker:9092",
        "PATH": "/usr/bin",
        "MY_EXCHANGE_NOTE": "kept: only the prefix counts",
    }
    dropped = drop_exchange_settings(environ)
    assert dropped == ["EXCHANGE_DATABASE", "EXCHANGE_KAFKA__BOOTSTRAP"]
    assert environ == {"PATH": "/usr/bin", "MY_EXCHANGE_NOTE": "kept: only the prefix counts"}
    assert "dropped EXCHANGE_DATABASE, EXCHANGE_KAFKA__BOOTSTRAP" in header(dropped)
    assert header([]) == "environment: no EXCHANGE_* variables to drop"


def test_this_session_has_no_exchange_settings() -> None:
    assert [name for name in os.environ if name.startswith("EXCHANGE_")] == []


def test_a_test_knob_is_dropped_and_its_value_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "_knobs", {})  # this session's own stay as they are
    environ = {"EXCHANGE_DIFFERENTIAL_EXAMPLES": "1000"}
    assert drop_exchange_settings(environ) == ["EXCHANGE_DIFFERENTIAL_EXAMPLES"]
    assert environ == {}
    assert knob("EXCHANGE_DIFFERENTIAL_EXAMPLES", "300") == "1000"

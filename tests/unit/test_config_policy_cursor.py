"""Settings and cursors: pure functions, no network (the policy: test_policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.config import load_settings
from exchange.errors import InvalidArgument
from exchange.subscriptions import MAX_CURSOR_CHARS, Cursor


def test_settings_layers_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text('listen = "127.0.0.1:6000"\n[limits]\nmax_objects = 50\nmax_depth = 10\n')
    settings = load_settings(
        config,
        environ={"EXCHANGE_LIMITS_MAX_OBJECTS": "60", "EXCHANGE_KAFKA_BOOTSTRAP": "k:9092"},
        overrides={"listen": "127.0.0.1:7000"},
    )
    assert settings.listen == "127.0.0.1:7000"
    assert settings.limits.max_objects == 60 and settings.limits.max_depth == 10
    assert settings.kafka.bootstrap == "k:9092"
    assert load_settings(environ={}).data_dir == "./exchange-data"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[limits]\nmax_objects = 'many'\n", "limits.max_objects"),
        ("unknown_key = 1\n", "unknown_key"),
        ("default_tlp = 'purple'\n", "default_tlp"),
        ("[limits]\nmax_depth = 0\n", "limits.max_depth"),
        ("[tls]\ncert_file = 'server.pem'\n", "tls.cert_file and tls.key_file"),
        ("[tls]\nclient_ca_file = 'ca.pem'\n", "tls.client_ca_file"),
        ("listen = \n", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(text)
    with pytest.raises(InvalidArgument, match=named.replace(".", r"\.")):
        load_settings(config, environ={})


@given(
    st.dictionaries(
        st.tuples(st.text(min_size=1, max_size=20), st.integers(0, 10)),
        st.tuples(st.integers(-1, 2**40), st.integers(-1, 2**40)),
        max_size=6,
    )
)
def test_cursor_round_trip(positions: dict[tuple[str, int], tuple[int, int]]) -> None:
    assert Cursor.decode(Cursor(positions).encode()).positions == positions


@pytest.mark.parametrize("text", ["", "not a cursor", "eyJ2IjoyfQ", "W10", "e30"])
def test_foreign_cursors_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="cursor"):
        Cursor.decode(text)


def test_a_cursor_over_its_bound_is_refused_before_it_is_decoded() -> None:
    # A valid cursor with an entry for each of 600 topic-partitions stays far below it.
    wide = Cursor(
        {(f"community.c{i:03d}", p): (2**40, 2**40) for i in range(100) for p in range(6)}
    )
    assert len(wide.encode()) < MAX_CURSOR_CHARS
    assert Cursor.decode(wide.encode()) == wide
    with pytest.raises(InvalidArgument, match=f"over the {MAX_CURSOR_CHARS:,}"):
        Cursor.decode("A" * (MAX_CURSOR_CHARS + 1))


def test_taxii_listens_by_default_only_on_the_embedded_default() -> None:
    assert load_settings(None, environ={}).taxii_listen == "127.0.0.1:6000"
    kafka = load_settings(None, environ={"EXCHANGE_KAFKA_BOOTSTRAP": "kafka:9092"})
    assert kafka.taxii_listen == ""
    postgres = load_settings(None, environ={"EXCHANGE_DATABASE": "postgresql://x@db:5432/x"})
    assert postgres.taxii_listen == ""
    named = load_settings(
        None,
        environ={"EXCHANGE_DATABASE": "postgresql://x@db:5432/x"},
        overrides={"taxii": {"listen": "127.0.0.1:6001"}},
    )
    assert named.taxii_listen == "127.0.0.1:6001"
    off = load_settings(None, environ={"EXCHANGE_TAXII_LISTEN": ""})
    assert off.taxii_listen == ""

"""Settings, the policy decision and cursors: pure functions, no network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange import policy
from exchange.config import load_settings
from exchange.errors import InvalidArgument
from exchange.model import Partner, Tlp
from exchange.subscriptions import Cursor

NGO = Partner("ngo", "NGO", "non-profit", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner(
    "plat", "Platform", "technology", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"
)


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
        ("listen = \n", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(text)
    with pytest.raises(InvalidArgument, match=named.replace(".", r"\.")):
        load_settings(config, environ={})


@given(tlp=st.sampled_from(list(Tlp)), disabled=st.booleans())
def test_routing_and_delivery_agree(tlp: Tlp, disabled: bool) -> None:
    """Whoever may receive an object reads one of the topics it is routed to."""
    for partner in (NGO, PLATFORM):
        who = dataclasses.replace(partner, disabled=disabled)
        allowed = policy.may_receive(who, tlp=tlp, submitter=NGO.partner_id)
        routed = set(policy.topics_for(tlp=tlp, submitter=NGO.partner_id))
        reads = set(policy.subscription_topics(who))
        # A disabled partner is refused at delivery even where topics overlap.
        assert allowed == (not disabled and bool(routed & reads))


def test_issue_two_rules() -> None:
    for tlp in (Tlp.CLEAR, Tlp.GREEN):
        assert policy.may_receive(PLATFORM, tlp=tlp, submitter=NGO.partner_id)
    for tlp in (Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED):
        assert not policy.may_receive(PLATFORM, tlp=tlp, submitter=NGO.partner_id)
        assert policy.may_receive(NGO, tlp=tlp, submitter=NGO.partner_id)
    disabled = Partner("ngo", "NGO", "non-profit", NGO.identity_id, disabled=True)
    assert not policy.may_receive(disabled, tlp=Tlp.CLEAR, submitter=NGO.partner_id)


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

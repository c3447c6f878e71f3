"""TLP marking ids and names."""

from __future__ import annotations

import pytest
import stix2

from exchange.model import Tlp
from exchange.stix import TLP_BY_MARKING_ID, marking_id, parse_tlp
from exchange.stix.tlp import TLP_EXTENSION_DEFINITION_ID

TLP2_IDS = {
    Tlp.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    Tlp.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    Tlp.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    Tlp.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    Tlp.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


@pytest.mark.parametrize(("tlp", "expected_id"), TLP2_IDS.items())
def test_marking_id_is_the_tlp_2_0_id(tlp: Tlp, expected_id: str) -> None:
    assert marking_id(tlp) == expected_id
    assert TLP_BY_MARKING_ID[expected_id] is tlp


@pytest.mark.parametrize(
    ("library_marking", "tlp"),
    [
        (stix2.TLP_WHITE, Tlp.CLEAR),
        (stix2.TLP_GREEN, Tlp.GREEN),
        (stix2.TLP_AMBER, Tlp.AMBER),
        (stix2.TLP_RED, Tlp.RED),
    ],
)
def test_tlp_1_0_ids_match_the_stix2_library(library_marking: object, tlp: Tlp) -> None:
    assert TLP_BY_MARKING_ID[library_marking.id] is tlp  # type: ignore[attr-defined]


def test_the_map_holds_exactly_the_nine_predefined_ids() -> None:
    library_ids = {m.id for m in (stix2.TLP_WHITE, stix2.TLP_GREEN, stix2.TLP_AMBER, stix2.TLP_RED)}
    assert set(TLP_BY_MARKING_ID) == library_ids | set(TLP2_IDS.values())


def test_the_map_is_read_only() -> None:
    with pytest.raises(TypeError):
        TLP_BY_MARKING_ID["marking-definition--x"] = Tlp.RED  # type: ignore[index]


def test_tlp_extension_definition_id() -> None:
    assert TLP_EXTENSION_DEFINITION_ID == (
        "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
    )


@pytest.mark.parametrize(
    ("name", "tlp"),
    [
        ("clear", Tlp.CLEAR),
        ("white", Tlp.CLEAR),
        ("TLP:WHITE", Tlp.CLEAR),
        ("green", Tlp.GREEN),
        ("Green", Tlp.GREEN),
        ("amber", Tlp.AMBER),
        ("TLP:AMBER+STRICT", Tlp.AMBER_STRICT),
        ("amber+strict", Tlp.AMBER_STRICT),
        ("tlp:red", Tlp.RED),
        ("  TLP: red ", Tlp.RED),
    ],
)
def test_parse_tlp(name: str, tlp: Tlp) -> None:
    assert parse_tlp(name) is tlp


@pytest.mark.parametrize("name", ["", "purple", "amber strict", "TLP:", "tlp:tlp:red", "x" * 500])
def test_parse_tlp_refuses_unknown_names_helpfully(name: str) -> None:
    with pytest.raises(
        ValueError, match="expected one of clear, green, amber, amber\\+strict, red"
    ) as info:
        parse_tlp(name)
    assert len(str(info.value)) < 300  # a long bad name is not echoed whole

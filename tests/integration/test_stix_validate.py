"""Per-object validation: every rule, every stix2 error mapping, hostile input."""

from __future__ import annotations

import copy
import pickle
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson
import pytest
import stix2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stix2 import exceptions as stix_errors
from stix2.registry import STIX2_OBJ_MAPS
from stix2patterns.validator import run_validator

from exchange.config import Limits
from exchange.model import Rejection, Tlp, ValidObject
from exchange.stix import INDUSTRY_SECTORS, TRAFFICKING_OBSERVABLE_TYPES, marking_id
from exchange.stix import validate_objects as _validate_objects
from exchange.stix._explain import explain as _explain
from exchange.stix.tlp import TLP_BY_MARKING_ID, TLP_EXTENSION_DEFINITION_ID
from exchange.stix.vocab import SCO_EXTENSION_TYPES, is_stix_id

SUBMITTER = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
OTHER_PARTNER = "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"
GREEN = marking_id(Tlp.GREEN)
RED = marking_id(Tlp.RED)
TLP1_WHITE = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"
STATEMENT_MARKING = "marking-definition--1b0b6a1c-2a4f-4c1e-8f7e-6a1d7c3e9b21"
T0 = "2026-01-06T02:46:39.000Z"
T1 = "2026-01-07T00:00:00.000Z"
LAST_RESORT = "a STIX 2.1 object the validator can check"


def new_id(obj_type: str) -> str:
    return f"{obj_type}--{uuid.uuid4()}"


def indicator(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--04bf2f07-940c-5d19-899c-f29d5da45255",
        "created": T0,
        "modified": T0,
        "created_by_ref": SUBMITTER,
        "name": "Recruitment lure",
        "description": "Observed in overseas-job outreach.",
        "indicator_types": ["malicious-activity"],
        "pattern": "[domain-name:value = 'lucky-invest-413111.example']",
        "pattern_type": "stix",
        "valid_from": T0,
        "labels": ["trafficking:recruitment", "lure:romance"],
        "confidence": 50,
        "object_marking_refs": [GREEN],
    }
    obj.update(changes)
    return obj


def without(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in names}


def sdo(obj_type: str, **props: Any) -> dict[str, Any]:
    return {
        "type": obj_type,
        "spec_version": "2.1",
        "id": new_id(obj_type),
        "created": T0,
        "modified": T0,
        **props,
    }


def sco(obj_type: str, **props: Any) -> dict[str, Any]:
    return {"type": obj_type, "spec_version": "2.1", "id": new_id(obj_type), **props}


def marking(**props: Any) -> dict[str, Any]:
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": STATEMENT_MARKING,
        "created": T0,
        **props,
    }


def validate_objects(objects: list[Any], **kw: Any) -> list[ValidObject | Rejection]:
    kw.setdefault("submitter_identity", SUBMITTER)
    kw.setdefault("default_tlp", Tlp.AMBER)
    kw.setdefault("limits", Limits())
    return _validate_objects(objects, **kw)


def accepted(obj: Any, **kw: Any) -> ValidObject:
    [result] = validate_objects([obj], **kw)
    assert isinstance(result, ValidObject), result
    return result


def rejected(obj: Any, **kw: Any) -> Rejection:
    [result] = validate_objects([obj], **kw)
    assert isinstance(result, Rejection), result
    assert not result.expected.startswith(LAST_RESORT), result  # every path has a precise reason
    return result


def body(result: ValidObject) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(result.body)
    return loaded


# -- results as a whole -----------------------------------------------------------------


def test_a_valid_indicator_becomes_a_valid_object() -> None:
    obj = indicator(revoked=True)
    result = accepted(obj)
    assert result.object_id == obj["id"]
    assert result.object_type == "indicator"
    assert result.version == T0
    assert result.created_by_ref == SUBMITTER
    assert result.tlp is Tlp.GREEN
    assert result.labels == ("trafficking:recruitment", "lure:romance")
    assert result.revoked is True
    assert result.spec_version == "2.1"
    assert result.index == 0
    assert result.body == orjson.dumps(obj)


def test_one_result_per_object_in_order_with_offset_indexes() -> None:
    objects = [
        indicator(),
        "nope",
        indicator(confidence=101),
        sco("domain-name", value="a.example"),
    ]
    results = validate_objects(objects, start_index=100)
    assert [type(r) for r in results] == [ValidObject, Rejection, Rejection, ValidObject]
    assert [r.index for r in results] == [100, 101, 102, 103]
    assert results[1].object_id == "objects[101]"


def test_the_input_is_not_modified() -> None:
    objects = [without(indicator(), "created_by_ref", "object_marking_refs"), indicator()]
    before = copy.deepcopy(objects)
    validate_objects(objects)
    assert objects == before


def test_results_and_arguments_are_picklable() -> None:
    results = validate_objects([indicator(), indicator(confidence=-1)])
    # Round trip of our own values, as a process pool does.
    assert pickle.loads(pickle.dumps(results)) == results  # noqa: S301
    assert pickle.loads(pickle.dumps(Limits(max_depth=9))) == Limits(max_depth=9)  # noqa: S301


def test_runs_in_a_process_pool_worker() -> None:
    objects = [indicator(), indicator(x_case="1")]
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(
            _validate_objects,
            objects,
            start_index=5,
            submitter_identity=SUBMITTER,
            default_tlp=Tlp.RED,
            limits=Limits(),
        ).result()
    assert remote == validate_objects(objects, start_index=5, default_tlp=Tlp.RED)


def test_rejection_version_is_modified_else_created() -> None:
    assert rejected(indicator(confidence=101, modified=T1)).version == T1
    assert rejected(without(indicator(confidence=101), "modified")).version == T0
    assert rejected(sco("domain-name", value=5)).version == ""


# -- rule 1: a JSON object with type and id ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [([], "an empty list"), ("x", "a JSON string"), (None, "JSON null"), (3, "a JSON number")],
)
def test_objects_must_be_json_objects(value: Any, kind: str) -> None:
    result = rejected(value)
    assert result.object_id == "objects[0]"
    assert result.property == ""
    assert kind in result.expected


@pytest.mark.parametrize(
    ("obj", "prop"),
    [
        (without(indicator(), "type"), "type"),
        (indicator(type=["indicator"]), "type"),
        (without(indicator(), "id"), "id"),
        (indicator(id=5), "id"),
    ],
)
def test_type_and_id_must_be_strings(obj: dict[str, Any], prop: str) -> None:
    result = rejected(obj)
    assert result.property == prop
    assert result.expected.startswith("a string")


@pytest.mark.parametrize(
    "bad_id",
    [
        "indicator--not-a-uuid",
        "identity--04bf2f07-940c-5d19-899c-f29d5da45255",  # another type's prefix
        "indicator-04bf2f07-940c-5d19-899c-f29d5da45255",
        "indicator--04BF2F07-940C-5D19-899C-F29D5DA45255",  # upper case
        "indicator--04bf2f07940c5d19899cf29d5da45255",  # no hyphens
        "indicator--{04bf2f07-940c-5d19-899c-f29d5da45255}",
        "indicator--04bf2f07-940c-5d19-c99c-f29d5da45255",  # not the RFC 4122 variant
        "indicator--04bf2f07-940c-5d19-899c-f29d5da45255 ",
    ],
)
def test_id_must_be_type_and_canonical_uuid(bad_id: str) -> None:
    result = rejected(indicator(id=bad_id))
    assert result.object_id == bad_id
    assert result.property == "id"
    assert result.expected.startswith('"indicator--" followed by a lower-case RFC 4122 UUID')


def test_object_id_falls_back_to_the_position_when_id_is_not_a_string() -> None:
    assert rejected(indicator(id=["x"]), start_index=7).object_id == "objects[7]"


def test_a_huge_id_is_not_echoed() -> None:
    result = rejected(indicator(id="indicator--" + "a" * 10_000))
    assert result.object_id == "objects[0]"
    assert len(result.expected) < 600


def test_reasons_stay_on_one_visible_line() -> None:
    result = rejected(indicator(id="indicator--x\n\u202eforged: accepted"))
    assert "\n" not in result.message
    assert "\u202e" not in result.message
    assert "\\u000a" in result.object_id


def test_unknown_and_custom_types_are_refused() -> None:
    obj = indicator(type="x-made-up", id="x-made-up--e97303da-b2c8-5353-9b15-dda8bffcb667")
    result = rejected(obj)
    assert result.property == "type"
    assert "custom object types are not accepted" in result.expected


def test_an_unknown_type_carrying_a_new_sdo_extension_is_still_refused() -> None:
    # stix2.parse returns such a dict unchecked; the exchange must not.
    ext = "extension-definition--d83fce45-ef58-4c6c-a3f4-1fbc32e98c6e"
    obj = {
        "type": "x-case",
        "spec_version": "2.1",
        "id": "x-case--e97303da-b2c8-5353-9b15-dda8bffcb667",
        "created": T0,
        "modified": T0,
        "extensions": {ext: {"extension_type": "new-sdo"}},
    }
    assert rejected(obj).property == "type"


def test_trafficking_observable_types_are_not_objects_of_their_own() -> None:
    obj = sco("x-phone-number", value="+15550888598")
    assert rejected(obj).property == "type"


def test_a_nested_bundle_is_refused() -> None:
    obj = {"type": "bundle", "id": new_id("bundle"), "objects": [indicator()]}
    result = rejected(obj)
    assert result.property == "type"
    assert "cannot be nested" in result.expected


# -- rule 2: STIX 2.1 only --------------------------------------------------------------------


def test_spec_version_2_0_is_refused() -> None:
    result = rejected(indicator(spec_version="2.0"))
    assert result.property == "spec_version"
    assert result.expected == '"2.1"; the exchange accepts STIX 2.1 only, got "2.0"'


@pytest.mark.parametrize(
    "obj",
    [
        without(indicator(), "spec_version"),
        without(
            marking(definition_type="statement", definition={"statement": "x"}), "spec_version"
        ),
    ],
)
def test_spec_version_is_required_on_sdos_sros_and_markings(obj: dict[str, Any]) -> None:
    result = rejected(obj)
    assert result.property == "spec_version"
    assert "required" in result.expected


def test_spec_version_is_optional_on_scos_but_must_be_2_1() -> None:
    obj = without(sco("domain-name", value="a.example"), "spec_version")
    assert accepted(obj).spec_version == "2.1"
    assert rejected(sco("domain-name", value="a.example", spec_version="2.0")).property == (
        "spec_version"
    )


# -- rule 3: string lengths and other JSON-level limits ---------------------------------------


def test_strings_up_to_the_limit_pass_and_longer_fail() -> None:
    limits = Limits(max_string_length=100)
    accepted(indicator(description="x" * 100), limits=limits)
    result = rejected(indicator(description="x" * 101), limits=limits)
    assert result.property == "description"
    assert result.expected == "a string of at most 100 characters, got 101"


def test_long_string_inside_a_list_of_objects_is_named_by_path() -> None:
    refs = [
        {"source_name": "a", "url": "https://a.example"},
        {"source_name": "b", "url": "u" * 200},
    ]
    result = rejected(indicator(external_references=refs), limits=Limits(max_string_length=100))
    assert result.property == "external_references[1].url"


def test_string_limit_counts_characters_not_bytes() -> None:
    accepted(indicator(description="é" * 100), limits=Limits(max_string_length=100))


def test_long_property_names_are_refused() -> None:
    limits = Limits(max_string_length=50)
    result = rejected(indicator(**{"x" * 51: 1}), limits=limits)
    assert result.expected.startswith("property names of at most 50 characters")


def test_the_default_limit_is_100_000_characters() -> None:
    result = rejected(indicator(description="x" * 100_001))
    assert result.expected == "a string of at most 100,000 characters, got 100,001"


def test_objects_nested_deeper_than_the_limit_are_refused() -> None:
    deep: Any = "leaf"
    for _ in range(50):
        deep = [deep]
    result = rejected(indicator(external_references=deep))
    assert result.expected == "nesting no deeper than 32 levels"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), "a finite number"),
        (float("inf"), "a finite number"),
        (2**64, "an integer that fits in 64 bits"),
        ({1, 2}, "a JSON value, got a Python set"),
        (b"bytes", "a JSON value, got a Python bytes"),
    ],
)
def test_values_json_cannot_carry_are_refused(value: Any, expected: str) -> None:
    result = rejected(indicator(description=value))
    assert result.property == "description"
    assert result.expected == expected


def test_non_string_keys_are_refused() -> None:
    result = rejected(indicator(external_references=[{1: "x"}]))
    assert result.property == "external_references[0]"
    assert result.expected.startswith("property names that are strings")


# -- rule 4: provenance -----------------------------------------------------------------------


def test_missing_created_by_ref_is_filled_with_the_submitter() -> None:
    result = accepted(without(indicator(), "created_by_ref"))
    assert result.created_by_ref == SUBMITTER
    assert body(result)["created_by_ref"] == SUBMITTER


def test_someone_elses_created_by_ref_is_refused() -> None:
    result = rejected(indicator(created_by_ref=OTHER_PARTNER))
    assert result.property == "created_by_ref"
    assert result.expected == (
        f"the submitter's own identity {SUBMITTER}; objects are published under the "
        "identity of the partner that submits them"
    )


@pytest.mark.parametrize("value", [None, 5, [SUBMITTER], SUBMITTER.upper()])
def test_malformed_created_by_ref_is_refused_as_not_the_submitter(value: Any) -> None:
    assert rejected(indicator(created_by_ref=value)).property == "created_by_ref"


def test_scos_get_no_created_by_ref() -> None:
    obj = sco("domain-name", value="recruit-now.example")
    result = accepted(obj)
    assert "created_by_ref" not in body(result)
    assert result.created_by_ref == SUBMITTER
    assert result.version == ""


def test_an_sco_with_created_by_ref_is_refused() -> None:
    obj = sco("url", value="https://recruit-now.example/apply", created_by_ref=SUBMITTER)
    result = rejected(obj)
    assert result.property == "created_by_ref"
    assert "no custom properties" in result.expected


def test_marking_definitions_are_stamped_too() -> None:
    obj = marking(definition_type="statement", definition={"statement": "Copyright Harbor Light"})
    result = accepted(obj)
    assert body(result)["created_by_ref"] == SUBMITTER
    assert result.version == T0  # marking definitions have no "modified"


# -- rule 5: TLP ------------------------------------------------------------------------------


@pytest.mark.parametrize(("marking_ref", "tlp"), TLP_BY_MARKING_ID.items())
def test_each_predefined_tlp_marking_sets_the_level(marking_ref: str, tlp: Tlp) -> None:
    result = accepted(indicator(object_marking_refs=[marking_ref]))
    assert result.tlp is tlp
    assert body(result)["object_marking_refs"] == [marking_ref]  # nothing added


def test_two_tlp_levels_are_refused_naming_both() -> None:
    result = rejected(indicator(object_marking_refs=[GREEN, RED]))
    assert result.property == "object_marking_refs"
    assert result.expected == "at most one TLP level per object, got GREEN and RED"


def test_tlp_1_0_white_and_2_0_clear_are_one_level() -> None:
    result = accepted(indicator(object_marking_refs=[TLP1_WHITE, marking_id(Tlp.CLEAR)]))
    assert result.tlp is Tlp.CLEAR


@pytest.mark.parametrize("default", list(Tlp))
def test_without_tlp_the_default_is_stamped_into_the_body(default: Tlp) -> None:
    result = accepted(without(indicator(), "object_marking_refs"), default_tlp=default)
    assert result.tlp is default
    assert body(result)["object_marking_refs"] == [marking_id(default)]


def test_non_tlp_markings_are_kept_and_the_default_added() -> None:
    result = accepted(indicator(object_marking_refs=[STATEMENT_MARKING]), default_tlp=Tlp.RED)
    assert result.tlp is Tlp.RED
    assert body(result)["object_marking_refs"] == [STATEMENT_MARKING, RED]


def test_scos_are_stamped_with_the_default_tlp() -> None:
    result = accepted(sco("ipv4-addr", value="198.51.100.7"), default_tlp=Tlp.GREEN)
    assert body(result)["object_marking_refs"] == [GREEN]


@pytest.mark.parametrize(
    ("refs", "prop"),
    [
        ([], "object_marking_refs"),
        (GREEN, "object_marking_refs"),
        ([GREEN, 5], "object_marking_refs[1]"),
    ],
)
def test_malformed_object_marking_refs_are_refused(refs: Any, prop: str) -> None:
    assert rejected(indicator(object_marking_refs=refs)).property == prop


def test_tlp_on_part_of_an_object_is_refused() -> None:
    granular = [{"selectors": ["description"], "marking_ref": RED}]
    result = rejected(indicator(granular_markings=granular))
    assert result.property == "granular_markings"
    assert "object_marking_refs" in result.expected


# -- rule 6: predefined TLP markings cannot be redefined ---------------------------------------


@pytest.mark.parametrize("tlp_id", list(TLP_BY_MARKING_ID))
def test_redefining_a_predefined_tlp_marking_is_refused(tlp_id: str) -> None:
    obj = marking(
        id=tlp_id,
        name="TLP:CLEAR",
        extensions={
            TLP_EXTENSION_DEFINITION_ID: {
                "extension_type": "property-extension",
                "tlp_2_0": "clear",
            }
        },
    )
    result = rejected(obj)
    assert result.property == "id"
    assert result.expected == (
        "predefined TLP marking definitions are built in and cannot be redefined; "
        "reference them in object_marking_refs"
    )


def test_a_tlp_1_0_definition_under_a_new_id_is_refused() -> None:
    # stix2 raises TLPMarkingDefinitionError
    result = rejected(marking(definition_type="tlp", definition={"tlp": "red"}))
    assert result.property == "definition"
    assert "cannot be redefined" in result.expected


def test_a_tlp_2_0_extension_under_a_new_id_is_refused() -> None:
    ext = {TLP_EXTENSION_DEFINITION_ID: {"extension_type": "property-extension", "tlp_2_0": "red"}}
    result = rejected(marking(name="TLP:RED", extensions=ext))
    assert result.property == f"extensions.{TLP_EXTENSION_DEFINITION_ID}"
    assert "cannot be redefined" in result.expected


# -- rule 7: confidence -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (150, "150"),
        (-1, "-1"),
        (True, "JSON true"),
        (50.0, "50.0"),
        ("50", "a JSON string"),
        (None, "JSON null"),
    ],
)
def test_confidence_must_be_an_integer_from_0_to_100(value: Any, shown: str) -> None:
    result = rejected(indicator(confidence=value))
    assert result.property == "confidence"
    assert result.expected.startswith(f"an integer from 0 to 100, got {shown}")


@pytest.mark.parametrize("value", [0, 100])
def test_confidence_bounds_are_inclusive(value: int) -> None:
    accepted(indicator(confidence=value))


# -- rule 8: the full stix2 check and its error mappings -----------------------------------------


def test_invalid_value_error_names_the_property() -> None:
    result = rejected(indicator(pattern="[url:value = 'https://x.example'"))
    assert result.property == "pattern"
    # In words, with the column: never the ANTLR parser's own message.
    assert result.expected == (
        "a valid STIX pattern; unexpected end of pattern at column 33: expected ']'"
    )


def test_invalid_value_error_for_a_number_out_of_range() -> None:
    obj = sdo("sighting", sighting_of_ref=indicator()["id"], count=-3)
    result = rejected(obj)
    assert result.property == "count"
    assert result.expected == "minimum value is 0. received -3"


def test_invalid_value_error_for_a_reference_of_the_wrong_type() -> None:
    obj = sdo("sighting", sighting_of_ref=indicator()["id"], where_sighted_refs=[indicator()["id"]])
    result = rejected(obj)
    assert result.property == "where_sighted_refs"
    assert "not one of the valid types" in result.expected


def test_invalid_value_error_for_an_impossible_date() -> None:
    result = rejected(indicator(modified="2026-13-45T00:00:00Z"))
    assert result.property == "modified"
    assert result.expected == (
        'a real UTC date and time like 2026-01-31T23:59:59.000Z, got "2026-13-45T00:00:00Z"'
    )


def test_invalid_value_error_inside_a_list_of_embedded_objects_gets_a_full_path() -> None:
    refs = [
        {"source_name": "a", "url": "https://a.example"},
        {"source_name": "b", "url": "https://b.example", "hashes": {"SHA-256": "abc"}},
    ]
    result = rejected(indicator(external_references=refs))
    assert result.property == "external_references[1].hashes"
    assert result.expected == "'abc' is not a valid SHA256 hash"


def test_missing_properties_error() -> None:
    result = rejected(without(indicator(), "pattern_type"))
    assert result.property == "pattern_type"
    assert result.expected == "required property 'pattern_type' is missing"


def test_missing_properties_error_with_several() -> None:
    result = rejected(without(indicator(), "pattern", "pattern_type"))
    assert result.property == "pattern, pattern_type"
    assert result.expected == "required properties 'pattern', 'pattern_type' are missing"


@pytest.mark.parametrize(
    ("obj", "prop"),
    [
        (without(indicator(), "created"), "created"),
        (without(indicator(), "modified"), "modified"),
        (without(indicator(), "valid_from"), "valid_from"),
        (
            without(marking(definition_type="statement", definition={"statement": "x"}), "created"),
            "created",
        ),
    ],
)
def test_properties_stix2_would_default_to_now_are_required(obj: dict[str, Any], prop: str) -> None:
    result = rejected(obj)
    assert result.property == prop
    assert result.expected == f"required property '{prop}' is missing"


def test_extra_properties_error() -> None:
    result = rejected(indicator(x_case_number="CASE-2231"))
    assert result.property == "x_case_number"
    assert result.expected == (
        "no custom properties; STIX 2.1 allows custom content only through a registered extension"
    )


def test_extra_properties_inside_an_embedded_object() -> None:
    phases = [{"kill_chain_name": "recruitment", "phase_name": "lure", "x_note": "n"}]
    result = rejected(indicator(kill_chain_phases=phases))
    assert result.property == "kill_chain_phases[0].x_note"
    assert result.expected.startswith("no custom properties")


@pytest.mark.parametrize("keyword", ["custom_properties", "allow_custom", "interoperability"])
def test_stix2_keyword_names_cannot_switch_its_checks_off(keyword: str) -> None:
    # {"custom_properties": {...}} would make stix2 accept custom content.
    result = rejected(indicator(**{keyword: {"x_case": "1"}}))
    assert result.property == keyword
    assert result.expected.startswith("no custom properties")


def test_valid_until_before_valid_from() -> None:
    result = rejected(indicator(valid_until="2026-01-02T00:00:00.000Z"))
    assert result.property == "valid_until"
    assert result.expected == (f"later than valid_from ({T0}), got 2026-01-02T00:00:00.000Z")


def test_valid_until_equal_to_valid_from_is_refused_too() -> None:
    assert rejected(indicator(valid_until=T0)).property == "valid_until"


def test_last_seen_before_first_seen() -> None:
    obj = sdo(
        "sighting",
        sighting_of_ref=indicator()["id"],
        first_seen=T1,
        last_seen=T0,
    )
    result = rejected(obj)
    assert result.property == "last_seen"
    assert result.expected.startswith(f"later than or equal to first_seen ({T1})")


def test_modified_before_created() -> None:
    result = rejected(indicator(created=T1, modified=T0))
    assert result.property == "modified"
    assert result.expected == f"later than or equal to created ({T1}), got {T0}"


def test_dependent_properties_error_when_the_needed_one_is_absent() -> None:
    result = rejected(sdo("location", latitude=10.5))
    assert result.property == "latitude"
    assert result.expected == "'latitude' only together with 'longitude'"


def test_dependent_properties_error_when_the_needed_one_is_false() -> None:
    obj = sco("email-message", is_multipart=False, body_multipart=[{"body": "x"}])
    result = rejected(obj)
    assert result.property == "body_multipart"
    assert result.expected == "'body_multipart' only when 'is_multipart' is true"


def test_dependent_properties_error_when_the_needed_one_forbids_it() -> None:
    result = rejected(sco("email-message", is_multipart=True, body="x"))
    assert result.property == "body"
    assert result.expected == "no 'body' when 'is_multipart' is true"


def test_mutually_exclusive_properties_error() -> None:
    result = rejected(sco("artifact", payload_bin="aGk=", url="https://a.example/f"))
    assert result.property == "payload_bin, url"
    assert result.expected == "only one of 'payload_bin', 'url'"
    assert rejected(sco("artifact", mime_type="text/plain")).expected == (
        "one of 'payload_bin', 'url'"
    )


def test_at_least_one_property_error() -> None:
    result = rejected(sco("file", size=3))
    assert result.property == "hashes, name"
    assert result.expected == "at least one of 'hashes', 'name'"


def test_at_least_one_property_error_inside_an_embedded_object() -> None:
    obj = sco("email-message", is_multipart=True, body_multipart=[{"content_type": "text/plain"}])
    result = rejected(obj)
    assert result.property == "body_multipart[0]"
    assert result.expected == "at least one of 'body', 'body_raw_ref'"


def test_invalid_selector_error() -> None:
    granular = [{"selectors": ["nope"], "marking_ref": STATEMENT_MARKING}]
    result = rejected(indicator(granular_markings=granular))
    assert result.property == "granular_markings"
    assert result.expected == 'selectors that name properties of this object; "nope" does not'


def test_property_presence_error_on_a_marking_without_definition() -> None:
    result = rejected(marking())
    assert result.property == "definition"


def test_unknown_marking_definition_type() -> None:
    result = rejected(marking(definition_type="x-secret", definition={"a": "b"}))
    assert result.property == "definition_type"


@pytest.mark.parametrize(
    ("exc", "prop", "expected"),
    [
        (
            stix_errors.InvalidObjRefError(stix2.v21.Indicator, "created_by_ref", "points nowhere"),
            "created_by_ref",
            "points nowhere",
        ),
        (
            stix_errors.ParseError("Can't parse unknown object type 'x'!"),
            "type",
            "a STIX 2.1 object type; Can't parse unknown object type 'x'!",
        ),
        (
            stix_errors.CustomContentError("custom content encountered"),
            "",
            "custom content encountered",
        ),
        (
            stix_errors.PropertyPresenceError("something is missing", stix2.v21.Indicator),
            "",
            "something is missing",
        ),
        (
            ValueError("definition_type must be a valid marking type"),
            "definition_type",
            "a marking type: statement or tlp",
        ),
        (ValueError("something else"), "", "something else"),
    ],
)
def test_explain_maps_stix2_errors_that_the_pre_checks_make_unreachable(
    exc: Exception, prop: str, expected: str
) -> None:
    explained = _explain(exc, indicator(), stix2.v21.Indicator)
    assert (explained.prop, explained.expected) == (prop, expected)


def test_explain_lets_programming_errors_through() -> None:
    with pytest.raises(TypeError):
        _explain(TypeError("bug"), indicator(), stix2.v21.Indicator)


# -- strict JSON types (stix2 would coerce these) ------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "prop", "expected"),
    [
        ({"labels": "trafficking"}, "labels", "a non-empty list, got a JSON string"),
        ({"labels": []}, "labels", "a non-empty list, got an empty list"),
        ({"labels": [1]}, "labels[0]", "a string, got a JSON number"),
        ({"revoked": "false"}, "revoked", "true or false, got a JSON string"),
        ({"name": 123}, "name", "a string, got a JSON number"),
        ({"description": None}, "description", "a string, got JSON null"),
        ({"created": "2026-1-6T2:46:39Z"}, "created", "a UTC timestamp like"),
        ({"created": "2026-01-06t02:46:39.000z"}, "created", "a UTC timestamp like"),
        ({"valid_from": "2026-01-06T02:46:39+00:00"}, "valid_from", "a UTC timestamp like"),
        (
            {"external_references": [{"source_name": 5, "url": "u"}]},
            "external_references[0].source_name",
            "a string",
        ),
        (
            {"kill_chain_phases": ["lure"]},
            "kill_chain_phases[0]",
            "a JSON object, got a JSON string",
        ),
    ],
)
def test_json_types_are_exact(changes: dict[str, Any], prop: str, expected: str) -> None:
    result = rejected(indicator(**changes))
    assert result.property == prop
    assert result.expected.startswith(expected)


def test_references_must_be_canonical_ids() -> None:
    target = indicator()["id"].upper().replace("INDICATOR", "indicator")
    obj = sdo(
        "relationship",
        relationship_type="indicates",
        source_ref=indicator()["id"],
        target_ref=target,
    )
    result = rejected(obj)
    assert result.property == "target_ref"


def test_integer_properties_refuse_strings_and_bools() -> None:
    obj = sdo("sighting", sighting_of_ref=indicator()["id"], count="3")
    assert rejected(obj).expected == "an integer, got a JSON string"
    obj = sdo("sighting", sighting_of_ref=indicator()["id"], count=True)
    assert rejected(obj).expected == "an integer, got JSON true"


# -- extensions ------------------------------------------------------------------------------------


def test_unregistered_extension_definition_is_refused() -> None:
    ext_id = "extension-definition--d83fce45-ef58-4c6c-a3f4-1fbc32e98c6e"
    ext = {ext_id: {"extension_type": "property-extension", "case": "CASE-1"}}
    result = rejected(indicator(extensions=ext))
    assert result.property == f"extensions.{ext_id}"
    assert "not registered" in result.expected


def test_unregistered_toplevel_property_extension_cannot_smuggle_properties() -> None:
    ext_id = "extension-definition--d83fce45-ef58-4c6c-a3f4-1fbc32e98c6e"
    ext = {ext_id: {"extension_type": "toplevel-property-extension"}}
    assert rejected(indicator(extensions=ext, x_case="CASE-1")).property == f"extensions.{ext_id}"


def test_unknown_predefined_style_extension_is_refused() -> None:
    assert (
        rejected(indicator(extensions={"x-foo-ext": {"a": "b"}})).property == "extensions.x-foo-ext"
    )


def test_a_registered_extension_is_accepted_on_its_own_type() -> None:
    archive = {"archive-ext": {"contains_refs": [new_id("file")]}}
    result = accepted(sco("file", name="contract.zip", extensions=archive))
    assert body(result)["extensions"] == archive


def test_a_registered_extension_is_refused_on_another_type() -> None:
    archive = {"archive-ext": {"contains_refs": [new_id("file")]}}
    result = rejected(indicator(extensions=archive))
    assert result.property == "extensions.archive-ext"
    assert result.expected == "archive-ext belongs on file objects, not indicator"


def test_custom_content_inside_a_registered_extension_is_refused() -> None:
    archive = {"archive-ext": {"contains_refs": [new_id("file")], "x_note": "n"}}
    result = rejected(sco("file", name="contract.zip", extensions=archive))
    assert result.property == "extensions.archive-ext.x_note"


def test_sco_extension_table_matches_the_library() -> None:
    assert set(SCO_EXTENSION_TYPES) == set(STIX2_OBJ_MAPS["2.1"]["extensions"])
    for ext, owner in SCO_EXTENSION_TYPES.items():
        owner_cls = STIX2_OBJ_MAPS["2.1"]["observables"][owner]
        assert "extensions" in owner_cls._properties, ext


# -- patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "[x-phone-number:value = '+15550888598']",
        "[cryptocurrency-wallet:address = 'bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh']",
    ],
)
def test_trafficking_observable_types_are_accepted_in_patterns(pattern: str) -> None:
    assert run_validator(pattern) == []  # pins stix2-patterns' behaviour
    stix2.parse(indicator(pattern=pattern), allow_custom=False, version="2.1")
    accepted(indicator(pattern=pattern))


@pytest.mark.parametrize(
    "pattern",
    [
        "[url:value = 'https://user:pw@recruit.example:8443/apply']",
        "[file:hashes.'SHA-256' = "
        "'3f0cd0e873a0000c6d07ef7b77e90d3593ad699fc1f7cd5bb2e35cbf0f19c557']",
        "[email-addr:value = 'hr@recruit.example'] AND [x-phone-number : value = '+15550888598']",
        "[user-account:account_login = 'it\\'s:me'] FOLLOWEDBY [domain-name:value = 'a.example']",
        "[ipv4-addr:value = '198.51.100.7'] "
        "START t'2026-01-01T00:00:00Z' STOP t'2026-02-01T00:00:00Z'",
    ],
)
def test_stix_observable_types_are_accepted_in_patterns(pattern: str) -> None:
    accepted(indicator(pattern=pattern))


def test_custom_observable_types_in_patterns_are_refused() -> None:
    result = rejected(indicator(pattern="[x-made-up:value = 'a'] OR [url:value = 'b']"))
    assert result.property == "pattern"
    assert result.expected.endswith("not x-made-up")


def test_non_stix_patterns_are_left_to_their_own_language() -> None:
    accepted(indicator(pattern="alert tcp any any -> any 80 (msg:'x';)", pattern_type="snort"))


# -- bodies: what is stored ----------------------------------------------------------------------


def test_hostile_text_survives_byte_for_byte() -> None:
    hostile = (
        'x\'); DROP TABLE objects;-- \u202e <script>alert(1)</script> "q" \\ \u0001 \U0001f600'
    )
    obj = indicator(name=hostile, description=hostile)
    result = accepted(obj)
    assert body(result)["name"] == hostile
    assert orjson.dumps(hostile) in result.body
    assert result.body == orjson.dumps(obj)


def test_nul_characters_are_refused_naming_the_property() -> None:
    """Defect 13: PostgreSQL cannot store U+0000; both stores must answer alike, so
    validation refuses it anywhere in an object (values, list items, property names)."""
    cases = [
        (indicator(description="a\u0000b"), "description", "got one at position 1"),
        (indicator(labels=["ok", "\u0000"]), "labels[1]", "got one at position 0"),
        (
            indicator(external_references=[{"source_name": "x", "u\u0000rl": "y"}]),
            "external_references[0].u\\u0000rl",
            "property names without NUL characters (U+0000)",
        ),
    ]
    for obj, prop, expected in cases:
        result = rejected(obj)
        assert (result.property, result.object_id) == (prop, obj["id"])
        assert "NUL characters (U+0000)" in result.expected and expected in result.expected
    # The clean object beside one that holds a NUL is still accepted.
    clean, bad = validate_objects([indicator(), indicator(name="\u0000")])
    assert isinstance(clean, ValidObject) and isinstance(bad, Rejection)


def test_timestamps_are_stored_as_sent_not_as_stix2_writes_them() -> None:
    result = accepted(indicator(created=T0, modified=T0, valid_from="2026-01-06T02:46:39.123456Z"))
    assert b'"created":"2026-01-06T02:46:39.000Z"' in result.body
    assert b'"valid_from":"2026-01-06T02:46:39.123456Z"' in result.body
    assert b"pattern_version" not in result.body  # stix2 adds it to its own copy only


# -- other object types ---------------------------------------------------------------------------


def test_identity_is_accepted() -> None:
    obj = sdo(
        "identity",
        name="Harbor Light Alliance",
        identity_class="organization",
        sectors=["non-profit"],
        object_marking_refs=[GREEN],
    )
    result = accepted(obj)
    assert (result.object_type, result.tlp) == ("identity", Tlp.GREEN)


def test_relationship_is_accepted() -> None:
    obj = sdo(
        "relationship",
        relationship_type="indicates",
        source_ref=indicator()["id"],
        target_ref=new_id("infrastructure"),
    )
    result = accepted(obj, default_tlp=Tlp.AMBER_STRICT)
    assert result.tlp is Tlp.AMBER_STRICT
    assert body(result)["created_by_ref"] == SUBMITTER


def test_sighting_is_accepted() -> None:
    obj = sdo(
        "sighting",
        sighting_of_ref=indicator()["id"],
        count=3,
        first_seen=T0,
        last_seen=T1,
        where_sighted_refs=[SUBMITTER],
        created_by_ref=SUBMITTER,
        object_marking_refs=[RED],
    )
    result = accepted(obj)
    assert (result.object_type, result.tlp, result.version) == ("sighting", Tlp.RED, T0)


def test_report_is_accepted() -> None:
    obj = sdo(
        "report",
        name="Q1",
        published=T0,
        object_refs=[indicator()["id"]],
        report_types=["threat-report"],
    )
    accepted(obj)


# -- vocab ---------------------------------------------------------------------------------------


def test_industry_sectors_follow_the_spec() -> None:
    assert {
        "non-profit",
        "technology",
        "government-national",
        "financial-services",
    } <= INDUSTRY_SECTORS
    assert "made-up" not in INDUSTRY_SECTORS
    assert isinstance(INDUSTRY_SECTORS, frozenset)


def test_trafficking_observable_types() -> None:
    assert frozenset({"x-phone-number", "cryptocurrency-wallet"}) == TRAFFICKING_OBSERVABLE_TYPES


@pytest.mark.parametrize(
    ("value", "type_name", "ok"),
    [
        ("indicator--04bf2f07-940c-5d19-899c-f29d5da45255", "indicator", True),
        ("indicator--04bf2f07-940c-4d19-a99c-f29d5da45255", "indicator", True),
        ("indicator--04bf2f07-940c-5d19-899c-f29d5da45255", "identity", False),
        ("indicator--04bf2f07-940c-5d19-899c-f29d5da4525", "indicator", False),
        ("indicator--04bf2f07-940c-5d19-899c-f29d5da452555", "indicator", False),
        ("indicatorx--04bf2f07-940c-5d19-899c-f29d5da45255", "indicator", False),
        ("indicator---04bf2f07-940c-5d19-899c-f29d5da45255", "indicator", False),
    ],
)
def test_is_stix_id(value: str, type_name: str, ok: bool) -> None:
    assert is_stix_id(value, type_name) is ok


# -- hostile input never escapes as an exception ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=5), st.integers(min_value=0, max_value=10_000))
def test_random_json_never_raises_and_gives_one_result_each(objects: list[Any], start: int) -> None:
    results = validate_objects(objects, start_index=start)
    assert len(results) == len(objects)
    for pos, result in enumerate(results):
        assert isinstance(result, ValidObject | Rejection)
        assert result.index == start + pos


indicator_keys = st.sampled_from(
    [
        *sorted(indicator()),
        "external_references",
        "kill_chain_phases",
        "valid_until",
        "granular_markings",
        "extensions",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(indicator_keys, json_values, min_size=1, max_size=3))
def test_a_valid_indicator_with_random_values_never_raises(changes: dict[str, Any]) -> None:
    [result] = validate_objects([indicator(**changes)])
    assert isinstance(result, ValidObject | Rejection)
    if isinstance(result, ValidObject):
        assert orjson.loads(result.body)["id"] == result.object_id


# -- what one object may cost ----------------------------------------------------------


def _pattern(comparisons: int) -> str:
    return "[" + " AND ".join(f"url:value = 'u{i}'" for i in range(comparisons)) + "]"


@pytest.mark.parametrize(
    ("pattern", "limit", "expected"),
    [
        (_pattern(65), "limits.max_pattern_comparisons", "at most 64 comparison expressions"),
        (
            "[url:value = '" + "x" * 5000 + "']",
            "limits.max_pattern_length",
            "at most 4,096 characters",
        ),
        (
            "(" * 17 + "[url:value = 'a']" + ")" * 17,
            "limits.max_pattern_depth",
            "nested at most 16 deep",
        ),
    ],
)
def test_costly_patterns_are_refused_before_they_are_parsed(
    pattern: str, limit: str, expected: str
) -> None:
    found = rejected(indicator(pattern=pattern))
    assert found.property == "pattern"
    assert expected in found.expected
    assert found.limit == limit


def test_a_pattern_at_the_limits_is_accepted_and_literals_do_not_count() -> None:
    accepted(indicator(pattern=_pattern(64)))
    # Brackets, parentheses and colons inside string literals are not structure.
    literal = "(([[:a:b:]]))" * 40
    accepted(indicator(pattern=f"[url:value = '{literal}']"))
    tight = Limits(max_pattern_comparisons=2, max_pattern_depth=2)
    accepted(indicator(pattern="[url:value = 'a'] OR [url:value = 'b']"), limits=tight)
    assert rejected(indicator(pattern="(([url:value = 'a']))"), limits=tight).limit


def test_an_object_too_large_to_publish_is_refused() -> None:
    labels = ["x" * 90_000] * 12  # ~1.08 MB of labels, each within max_string_length
    found = rejected(indicator(labels=labels))
    assert found.limit == "limits.max_object_bytes"
    assert "at most 1,000,000 bytes" in found.expected
    accepted(indicator(labels=["x" * 90_000] * 10))


def test_an_object_with_too_many_nested_objects_is_refused() -> None:
    refs = [{"source_name": f"s{i}", "url": f"https://e.example/{i}"} for i in range(1000)]
    found = rejected(indicator(external_references=[*refs, {"source_name": "one more"}]))
    assert found.limit == "limits.max_json_containers"
    # The object itself and its lists count too: 1,000 references alone are too many.
    accepted(indicator(external_references=refs[:990]))


# -- every problem of an object in one rejection ------------------------------------------


def problems_of(result: Rejection) -> list[tuple[str, str]]:
    return [(p.property, p.expected) for p in result.all_problems]


def test_three_problems_come_in_one_rejection() -> None:
    obj = without(indicator(confidence=250, valid_from="yesterday"), "pattern_type")
    result = rejected(obj)
    assert problems_of(result) == [
        ("confidence", "an integer from 0 to 100, got 250"),
        ("valid_from", 'a UTC timestamp like 2026-01-31T23:59:59.000Z, got "yesterday"'),
        ("pattern_type", "required property 'pattern_type' is missing"),
    ]
    # The first problem is the one a single-problem answer always named.
    assert (result.property, result.expected) == problems_of(result)[0]
    assert result.message == (
        f"{obj['id']}: 3 problems: "
        "1) property 'confidence': an integer from 0 to 100, got 250; "
        "2) property 'valid_from': a UTC timestamp like 2026-01-31T23:59:59.000Z, "
        'got "yesterday"; '
        "3) property 'pattern_type': required property 'pattern_type' is missing"
    )
    assert result.more_problems == 0


def test_one_problem_reads_as_it_always_has() -> None:
    result = rejected(indicator(confidence=250))
    assert result.problems == () and result.more_problems == 0
    assert result.message == (
        f"{indicator()['id']}: property 'confidence': an integer from 0 to 100, got 250"
    )


def test_problems_stix2_alone_finds_are_all_named() -> None:
    # Each of these only stix2 judges: a vocabulary, an embedded object, a rule between
    # two properties, the pattern.
    obj = sdo(
        "identity",
        name="Harbor Light",
        identity_class="organization",
        external_references=[{"url": "https://x.example"}],
        created_by_ref=SUBMITTER,
        x_note="custom",
    )
    result = rejected(obj)
    assert [p for p, _ in problems_of(result)] == ["x_note", "external_references[0].source_name"]
    both = indicator(
        valid_until="2026-01-01T00:00:00.000Z",
        kill_chain_phases=[{"kill_chain_name": "lure"}],
        pattern="[url:value = 'a' AND ]",
    )
    assert [p for p, _ in problems_of(rejected(both))] == [
        "kill_chain_phases[0].phase_name",
        "pattern",
        "valid_until",
    ]


def test_problems_past_the_limit_are_counted() -> None:
    custom = {f"x_custom_{i}": i for i in range(3)}
    obj = indicator(
        confidence=250,
        revoked="no",
        labels="one",
        lang=7,
        name=["x"],
        description=1,
        valid_from="today",
        valid_until="later",
        created_by_ref=OTHER_PARTNER,
        indicator_types="malicious-activity",
        pattern_version=2.1,
        external_references={},
        **custom,
    )
    result = rejected(obj)
    assert len(result.problems) == 10
    assert result.more_problems == 3
    assert result.message.endswith("; ... and 3 more")
    assert result.message.startswith(f"{obj['id']}: 13 problems: 1) property ")


def test_one_problem_per_property() -> None:
    # The exchange's own check and stix2 both refuse this timestamp: one problem.
    result = rejected(indicator(valid_from="yesterday", confidence=101))
    assert [p for p, _ in problems_of(result)] == ["confidence", "valid_from"]
    # A date only stix2 finds impossible is named by stix2, after the exchange's checks.
    result = rejected(indicator(valid_from="2026-02-30T00:00:00Z", confidence=101))
    assert problems_of(result)[1][0] == "valid_from"
    assert "a real UTC date and time" in problems_of(result)[1][1]


def test_a_costly_pattern_is_never_parsed_however_many_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*args: Any) -> None:
        raise AssertionError("a pattern past the limits was parsed")

    monkeypatch.setattr("exchange.stix._stix2_stage.pattern_problem", parsed)
    monkeypatch.setattr("stix2.v21.sdo.run_validator", parsed)
    obj = indicator(pattern=_pattern(65), confidence=250, valid_until="2026-01-01T00:00:00.000Z")
    result = rejected(obj)
    assert [p for p, _ in problems_of(result)] == ["confidence", "pattern", "valid_until"]
    assert result.limit == "limits.max_pattern_comparisons"


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (
            "[url:value = 'a' AND ]",
            "expected a comparison like file:name = 'x' after 'AND' at column 22, got ']'",
        ),
        ("[url:value = 'a'", "unexpected end of pattern at column 17: expected ']'"),
        ("[url:value = lure]", "unquoted string 'lure' at column 14: expected a value"),
        ("[url:value FOO 'a']", "unknown operator 'FOO' at column 12: expected an operator"),
        ("", "the pattern is empty: expected an observation expression in square brackets"),
        ("   ", "the pattern is empty"),
        ("[url:value = 'a'] AND", "unexpected end of pattern at column 22"),
        ("url:value = 'a'", "expected an observation expression in square brackets"),
        ('[url:value = "a"]', "at column 14: quote strings with single quotes"),
        (
            "[url:value = 'a'] WITHIN 5 SECONDS WITHIN 6 SECONDS",
            "at most one WITHIN qualifier on an observation expression",
        ),
        ("[file:hashes.'SHA-256' = 'abc']", "'abc' is not a valid SHA-256 hash"),
    ],
)
def test_pattern_errors_are_worded_with_the_column(pattern: str, words: str) -> None:
    found = rejected(indicator(pattern=pattern))
    assert found.property == "pattern"
    assert found.expected.startswith("a valid STIX pattern; ")
    assert words in found.expected
    for jargon in ("mismatched input", "expecting {", "extraneous", "<EOF>", "FAIL", "Literal"):
        assert jargon not in found.message


def test_a_bad_pattern_is_worded_among_other_problems() -> None:
    result = rejected(indicator(pattern="[url:value = 'a'", confidence=-1))
    assert problems_of(result) == [
        ("confidence", "an integer from 0 to 100, got -1"),
        ("pattern", "a valid STIX pattern; unexpected end of pattern at column 17: expected ']'"),
    ]


def test_pattern_version_2_0_is_worded_in_its_grammar() -> None:
    found = rejected(indicator(pattern="[url:value = 'a' AND ]", pattern_version="2.0"))
    assert "after 'AND' at column 22" in found.expected

"""The fast path is the same validator: whatever it answers, the full path answers
too, field for field and byte for byte, and what it accepts the OASIS validator
accepts as well.

Inputs: the valid objects of the shared corpus and of tests/helpers, objects of
every STIX type generated from stix2's property definitions, the corpus's hostile
cases, and mutations of all of them. ``EXCHANGE_DIFFERENTIAL_EXAMPLES`` raises the
number of examples (a separate long job); the default keeps the suite quick.
"""

from __future__ import annotations

import base64
import copy
import os
import random
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stix2 import properties as stix_props
from stix2.registry import STIX2_OBJ_MAPS
from stix2.v21 import common as stix_common
from stix2validator import ValidationOptions, validate_instance

from exchange.config import Limits
from exchange.model import Tlp, ValidObject
from exchange.stix import validate
from exchange.stix._explain import EXTENSION_CLASSES
from exchange.stix._fast import compiled, fast_validate
from exchange.stix.tlp import TLP_BY_MARKING_ID, TLP_EXTENSION_DEFINITION_ID, marking_id
from exchange.stix.vocab import SCO_EXTENSION_TYPES
from tests.environment import knob
from tests.helpers import indicator, partner_export

ROOT = Path(__file__).resolve().parents[2]
# The shared corpus sits next to the repository (or its worktree): /work/shared/corpus.
CORPUS = Path(os.environ.get("EXCHANGE_CORPUS", ROOT.parent / "shared" / "corpus"))
EXAMPLES = int(knob("EXCHANGE_DIFFERENTIAL_EXAMPLES", "250"))
SUBMITTER = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
OTHER = "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"
MAPS = STIX2_OBJ_MAPS["2.1"]
TYPES = sorted({*MAPS["objects"], *MAPS["observables"]} - {"bundle"})
TIGHT = Limits(
    max_string_length=256,
    max_depth=4,
    max_json_containers=6,
    max_object_bytes=1_200,
    max_pattern_length=60,
    max_pattern_comparisons=1,
    max_pattern_depth=2,
)
LIMITS = (Limits(), Limits(), TIGHT, Limits(max_string_length=100))
OASIS = ValidationOptions(version="2.1")
PATTERNS = (
    "[x-phone-number:value = '+15550000123']",
    "[cryptocurrency-wallet:address = 'bc1q0000000000000000000000000000000a']",
    "[domain-name:value = 'lucky-invest-1.example'] OR [url:value = 'https://jobs.example/a']",
    "[user-account:account_login = 'recruiter_1' AND user-account:is_privileged = true]",
    "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
    "[email-addr:value MATCHES '^jobs@.*'] FOLLOWEDBY [url:value = 'x'] WITHIN 600 SECONDS",
)


# -- the comparison ---------------------------------------------------------------------


def decide(obj: Any, submitter: str, tlp: Tlp, limits: Limits) -> ValidObject | None:
    """Both paths on ``obj``; fails on any difference. The fast path's answer."""
    fast = fast_validate(copy.deepcopy(obj), 3, submitter, tlp, limits)
    full = validate._validate_one(copy.deepcopy(obj), 3, submitter, tlp, limits)
    if fast is not None:
        assert fast == full, f"fast path {fast!r}\nfull path {full!r}\nfor {obj!r}"
        assert type(fast.body) is bytes
        assert oasis_errors(fast.body) == [], obj
    return fast


# What the exchange accepts (on both paths: stix2 does not check it either) and the
# OASIS validator refuses. Differences between the two validators, documented here,
# not between the two paths; anything else the OASIS validator finds fails the test.
OASIS_ONLY = (
    # created/modified: the exchange takes any precision, as stix2 does; OASIS wants
    # exactly milliseconds.
    "must be precise to the millisecond",
    # Text the exchange stores as submitted without judging its format (stix2 does
    # not either): MIME types, character sets, URLs, e-mail and MAC addresses... The
    # OASIS schemas hold them to patterns ("does not match '^...'") and formats.
    "must be an IANA registered",
    "does not match '^",
    "is not a '",
    "RFC 5646 language code",
    "does not match 'cpe:",
    "is not CPE v2.3 compliant",
    "contains invalid characters",  # relationship_type and other type names
    "'url' must be a valid url",
    "match any of the regexes",  # dictionary keys (startup_info, socket options...)
    ".request_header.",  # a dictionary's values: OASIS wants lists of strings here
    # extension-definition: stix2 does not tie extension_properties to
    # toplevel-property-extension.
    "should not be valid under {'required': ['extension_properties']}",
    # Ids: the exchange (as stix2 for STIX 2.1) wants the RFC 4122 variant, any
    # version; the OASIS validator wants versions 1 to 5 (for a marking definition it
    # then says its definition is invalid).
    "does not match the id format",
    "must use UUIDv4 for its id",
    "a UUIDv4 must be used",
    # References: stix2 takes any SCO as malware-analysis sample_ref (and the like);
    # the OASIS schemas list fewer types.
    "{'pattern': '^",
    # email-message: stix2 refuses a body beside is_multipart true only when the body
    # is not empty; OASIS refuses any.
    "Since 'is_multipart' is true",
    # Binary: stix2 decodes base64 leniently (skipping characters outside the
    # alphabet, such as spaces and line breaks); OASIS wants it strict.
    "must be base64 encoded",
    "must be a base64-encoded string",
    # A marking definition's granular marking naming the marking itself: stix2 lets it.
    "no circular references",
    # windows-pebinary-ext time_date_stamp: stix2 takes fractions (and drops them);
    # OASIS wants whole seconds.
    "time_date_stamp: ",
    # windows-process-ext: stix2 wants any one property; the OASIS schema one of a
    # list without integrity_level (its message is the schema, printed whole).
    "extensions.windows-process-ext: {",
    # Sizes stix2 takes negative (alternate_data_streams size has no minimum there).
    "is less than the minimum of 0",
    # Dictionaries: stix2 takes any JSON values and keys; OASIS wants strings or
    # integers in ipfix, language codes and property names in contents.
    "{'anyOf': [{'type': 'string'}, {'type': 'integer'}]}",
    "in 'contents' property must be an RFC 5646 code",
    "of the 'contents' property is invalid",
    "additional_header_fields.",  # OASIS: strings or lists of strings
    "'definition' must contain a valid statement, TLP, or custom marking definition",
)


@cache
def oasis_errors(body: bytes) -> list[str]:
    obj = orjson.loads(body)
    if obj["type"] == "language-content" and not all(
        isinstance(v, dict) for v in obj["contents"].values()
    ):
        # The exchange, like stix2, takes any JSON as a translation; the spec wants an
        # object of translated properties, and the OASIS validator fails on anything
        # else (AttributeError in its language_contents check).
        return []
    result = validate_instance(obj, OASIS)
    errors = [str(e.message) for e in result.errors]
    if obj["type"] in ("windows-registry-key", "process"):
        # stix2 (so the exchange) takes a registry key with neither key nor values, a
        # process with created_time alone: the OASIS schemas want one of a shorter
        # list (their message is the object, or the schema, printed whole).
        whole = f"{obj['id']}: {{'type': '{obj['type']}'"
        errors = [e for e in errors if "anyOf" not in e and not e.startswith(whole)]
    return [e for e in errors if not any(known in e for known in OASIS_ONLY)]


# -- valid objects: corpus, fixtures, generated -------------------------------------------


def corpus_objects(kind: str) -> Iterator[tuple[dict[str, Any], str]]:
    """(object, its submitter's identity) from the corpus's ``kind`` ("valid" or
    "invalid") bundles."""
    if not (CORPUS / "manifest.json").is_file():
        return
    manifest = orjson.loads((CORPUS / "manifest.json").read_bytes())
    partners = orjson.loads((CORPUS / "partners.json").read_bytes())
    identities = {p["key"]: p["identity"]["id"] for p in partners}
    for name, entry in sorted(manifest.items()):
        if not name.startswith(f"{kind}/") or not name.endswith(".json"):
            continue
        try:
            data = orjson.loads((CORPUS / name).read_bytes())
        except orjson.JSONDecodeError:
            continue
        objects = data.get("objects", [data]) if isinstance(data, dict) else data
        for obj in objects if isinstance(objects, list) else [objects]:
            yield obj, identities.get(entry["submitter"], SUBMITTER)


def fixture_objects() -> list[dict[str, Any]]:
    export = partner_export(SUBMITTER, "Harbor Light Alliance")["objects"]
    return [*export, indicator(None, tlp=None), indicator(SUBMITTER, n=7, tlp=Tlp.RED)]


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def stamp(rng: random.Random) -> str:
    seconds = rng.randrange(1_600_000_000, 1_800_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + rng.choice(
        ["Z", ".000Z", ".5Z", ".123456Z", ".120Z"]
    )


def text(rng: random.Random, *, empty: bool = True) -> str:
    alphabet = "abcdefghij klmnop-_.:/'\"\\\n\té漢😀\u202e<>"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0 if empty else 1, 24)))


@cache
def reference_types(prop: Any) -> list[str]:
    found = []
    for type_name in sorted({*MAPS["objects"], *MAPS["observables"]}):
        try:
            prop.clean(f"{type_name}--{uuid.uuid4()}", False, False)
        except Exception:  # noqa: S112 - not a type it takes
            continue
        found.append(type_name)
    return found


def value_for(rng: random.Random, prop: Any, name: str, depth: int) -> Any:  # noqa: PLR0911, PLR0912
    """A value stix2 and the exchange take for ``prop``, most of the time."""
    kind = type(prop)
    if hasattr(prop, "_fixed_value"):
        return prop._fixed_value
    if kind is stix_props.ListProperty:
        contained = prop.contained
        return [
            value_for(rng, contained, name, depth + 1)
            if isinstance(contained, stix_props.Property)
            else fields_for(rng, contained, depth + 1)
            for _ in range(rng.randrange(1, 3))
        ]
    if kind is stix_props.EmbeddedObjectProperty:
        return fields_for(rng, prop.type, depth + 1)
    if kind is stix_props.TimestampProperty:
        return stamp(rng)
    if kind is stix_props.BooleanProperty:
        return rng.random() < 0.5
    if kind is stix_props.IntegerProperty:
        low = 0 if name == "confidence" else (prop.min if prop.min is not None else -1000)
        high = 100 if name == "confidence" else (prop.max if prop.max is not None else 100_000)
        return rng.randint(low, high)
    if kind is stix_props.FloatProperty:
        low = prop.min if prop.min is not None else -1e6
        high = prop.max if prop.max is not None else 1e6
        return rng.choice([round(rng.uniform(low, high), 4), int(low), int(high)])
    if kind is stix_props.ReferenceProperty:
        return f"{rng.choice(reference_types(prop))}--{new_uuid(rng)}"
    if kind is stix_props.HashesProperty:
        lengths = {"MD5": 16, "SHA-1": 20, "SHA-256": 32, "SHA-512": 64}
        picked = rng.sample(sorted(lengths), rng.randrange(1, 3))
        return {k: rng.randbytes(lengths[k]).hex() for k in picked}
    if kind is stix_props.DictionaryProperty:
        return {
            rng.choice(["SO_X", "IP_TTL", "key", "x-header", "Content_Type"]) + str(i): (
                rng.randint(0, 9) if name == "options" else text(rng)
            )
            for i in range(rng.randrange(1, 3))
        }
    if kind is stix_props.BinaryProperty:
        return base64.b64encode(rng.randbytes(rng.randrange(1, 12))).decode()
    if kind is stix_props.HexProperty:
        return rng.randbytes(rng.randrange(1, 6)).hex()
    if kind is stix_props.EnumProperty:
        return rng.choice(list(prop.allowed))
    if kind is stix_props.OpenVocabProperty:
        return rng.choice([*prop.allowed, text(rng, empty=False)])
    if kind is stix_common.MarkingProperty:
        return {"statement": text(rng, empty=False)}
    if name == "relationship_type":
        return rng.choice(["indicates", "related-to", "uses", text(rng)])
    if name == "lang":
        return rng.choice(["en", "de", "fil", text(rng)])
    return text(rng)


def fields_for(rng: random.Random, cls: Any, depth: int) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, prop in cls._properties.items():
        if name in ("granular_markings", "extensions", "objects") or type(prop) is (
            stix_props.ObservableProperty
        ):
            continue
        if prop.required or rng.random() < 0.4:
            obj[name] = value_for(rng, prop, name, depth)
    if not obj:  # classes that need at least one property
        name = rng.choice(sorted(cls._properties))
        obj[name] = value_for(rng, cls._properties[name], name, depth)
    return obj


ORDERED = (
    ("created", "modified"),
    ("first_seen", "last_seen"),
    ("first_observed", "last_observed"),
    ("start", "end"),
    ("start_time", "stop_time"),
    ("valid_from", "valid_until"),
)


def generated(rng: random.Random, obj_type: str) -> dict[str, Any]:  # noqa: PLR0912
    """An object of ``obj_type`` built from its stix2 class, with the rules between
    properties kept most of the time."""
    cls = MAPS["objects"].get(obj_type) or MAPS["observables"][obj_type]
    obj = {"type": obj_type, **fields_for(rng, cls, 1)}
    obj["id"] = f"{obj_type}--{new_uuid(rng)}"
    if "created_by_ref" in obj:
        obj["created_by_ref"] = SUBMITTER
    if "object_marking_refs" in obj:
        tlp = rng.choice(sorted(TLP_BY_MARKING_ID))
        obj["object_marking_refs"] = rng.choice(
            [
                [tlp],
                [tlp, f"marking-definition--{new_uuid(rng)}"],
                [f"marking-definition--{new_uuid(rng)}"],
            ]
        )
    if obj_type in MAPS["objects"]:  # what the exchange requires of SDOs and SROs
        obj["spec_version"] = "2.1"
        for name in ("created", "modified", "valid_from"):
            if name in cls._properties and (name != "valid_from" or obj_type == "indicator"):
                obj.setdefault(name, stamp(rng))
    for first, then in ORDERED:
        if first in obj and then in obj:
            low, high = sorted([obj[first], obj[then]], key=lambda s: s.rstrip("Z").ljust(26, "0"))
            obj[first], obj[then] = low, high
    if obj_type == "indicator":
        obj.update(pattern=rng.choice(PATTERNS), pattern_type="stix")
        if "pattern_version" in obj:
            obj["pattern_version"] = "2.1"
        if obj.get("valid_until") == obj["valid_from"]:
            del obj["valid_until"]
    if obj_type == "relationship" and obj.get("start_time") == obj.get("stop_time"):
        obj.pop("stop_time", None)
    if obj_type == "marking-definition":
        obj["definition_type"] = "statement"
        obj["definition"] = {"statement": text(rng, empty=False)}
    if obj_type == "location":
        obj["country"] = "PH"
        if ("latitude" in obj) != ("longitude" in obj):
            obj.pop("latitude", None), obj.pop("longitude", None), obj.pop("precision", None)
    if obj_type == "artifact":
        obj.pop(rng.choice(["payload_bin", "url"]), None)
        if "url" not in obj and "payload_bin" not in obj:
            obj["payload_bin"] = "aGk="
        if "url" in obj:
            obj["hashes"] = {"MD5": rng.randbytes(16).hex()}
    if obj_type == "network-traffic" and "end" in obj:
        obj["is_active"] = False
    if obj_type == "email-message":
        obj.pop("body" if obj["is_multipart"] else "body_multipart", None)
    if obj_type == "malware" and obj.get("is_family"):
        obj.setdefault("name", "family")
    if obj_type == "language-content" and rng.random() < 0.8:
        obj["contents"] = {"de": {"name": text(rng, empty=False)}}
    if obj_type == "observed-data":
        obj["object_refs"] = [f"ipv4-addr--{new_uuid(rng)}"]
    if obj_type in SCO_EXTENSION_TYPES.values() and rng.random() < 0.5:
        keys = [k for k, owner in SCO_EXTENSION_TYPES.items() if owner == obj_type]
        key = rng.choice(keys)
        obj["extensions"] = {key: fields_for(rng, EXTENSION_CLASSES[key], 2)}
    if rng.random() < 0.2 and "granular_markings" in cls._properties:
        named = [n for n in obj if n in cls._properties and obj[n]]
        obj["granular_markings"] = [
            {
                "marking_ref": f"marking-definition--{new_uuid(rng)}",
                "selectors": [rng.choice(named)],
            }
        ]
    return obj


# -- mutations ----------------------------------------------------------------------------

HOSTILE: tuple[Any, ...] = (
    None,
    "",
    [],
    {},
    0,
    -1,
    101,
    2**63,
    2**64,
    -(2**63) - 1,
    1.5,
    70.0,
    True,
    False,
    "\x00",
    "a\x00b",
    "x" * 300,
    [[[[[["deep"]]]]]],
    [None],
    [""],
    {"": 1},
    {"a\x00": 1},
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00.1234567Z",
    "2026-12-31T23:59:60Z",
    "2026-01-01 00:00:00Z",
    "0000-01-01T00:00:00Z",
    "2026-01-01T00:00:00+01:00",
    "2026-1-01T00:00:00Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",
    "malware--6ba7b810-9dad-41d1-80b4-00c04fd430c8",
    "identity--6BA7B810-9DAD-41D1-80B4-00C04FD430C8",
    "identity--6ba7b810-9dad-11d1-00b4-00c04fd430c8",
    "identity--{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
    "x-custom--6ba7b810-9dad-41d1-80b4-00c04fd430c8",
    OTHER,
    "true",
    "1",
    "stix",
    "sigma",
    "[x-unknown:value = 'a']",
    "[file:name = 'a'",
    "2.0",
    "statement",
    "tlp",
    marking_id(Tlp.RED),
    marking_id(Tlp.CLEAR),
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
)
NAMES = (
    "x_custom",
    "custom_properties",
    "allow_custom",
    "interoperability",
    "_valid_refs",
    "",
    "Name",
    "nam\x00e",
    "is_family",
    "pattern_version",
    "granular_markings",
    "extensions",
    "objects",
    "defanged",
    "spec_version",
    "id",
    "type",
    "created_by_ref",
    "revoked",
    "lang",
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from paths(item, (*prefix, i))


def mutate(rng: random.Random, obj: dict[str, Any]) -> Any:  # noqa: PLR0912
    obj = copy.deepcopy(obj)
    choice = rng.randrange(12)
    where = list(paths(obj))
    if choice == 0 and obj:
        del obj[rng.choice(sorted(obj))]
    elif choice == 1:
        obj[rng.choice(NAMES)] = rng.choice([*HOSTILE[:20], "x"])
    elif choice in (2, 3) and where:  # any value anywhere, replaced by a hostile one
        path = rng.choice(where)
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
    elif choice == 4 and where:  # a value's JSON type changed
        path = rng.choice(where)
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        old = parent[path[-1]]
        parent[path[-1]] = rng.choice(
            [[old], str(old), {"v": old}, (old or [None])[0] if isinstance(old, list) else old]
        )
    elif choice == 5:
        obj["object_marking_refs"] = rng.sample(sorted(TLP_BY_MARKING_ID), rng.randrange(1, 3)) + (
            [f"marking-definition--{uuid.uuid4()}"] if rng.random() < 0.3 else []
        )
    elif choice == 6:
        obj["granular_markings"] = [
            {
                "marking_ref": rng.choice(
                    [*TLP_BY_MARKING_ID, f"marking-definition--{uuid.uuid4()}"]
                ),
                "selectors": [rng.choice([*obj, "nope", "labels.[0]", "id"])],
            }
        ]
    elif choice == 7:
        key = rng.choice(
            [
                *SCO_EXTENSION_TYPES,
                TLP_EXTENSION_DEFINITION_ID,
                f"extension-definition--{uuid.uuid4()}",
                "x-ext",
            ]
        )
        body = (
            fields_for(rng, EXTENSION_CLASSES[key], 2)
            if key in EXTENSION_CLASSES
            else {"extension_type": "toplevel-property-extension"}
        )
        obj["extensions"] = {key: body}
    elif choice == 8 and isinstance(obj.get("id"), str):
        prefix, _, rest = obj["id"].partition("--")
        obj["id"] = rng.choice(
            [
                f"{prefix}--{rest.upper()}",
                f"indicator--{rest}",
                f"{prefix}-{rest}",
                f"{prefix}--{rest[:14]}0{rest[15:]}",
            ]
        )
    elif choice == 9:
        for name in ("created", "modified", "valid_from", "first_seen", "start"):
            if name in obj:
                obj[name] = rng.choice(
                    [
                        "2030-01-01T00:00:00Z",
                        "1999-01-01T00:00:00.000Z",
                        "2026-01-06T02:46:39.0001Z",
                    ]
                )
                break
    elif choice == 10 and obj.get("type") == "indicator":
        obj.update(
            rng.choice(
                [
                    {"pattern_version": "2.0"},
                    {"pattern_version": ""},
                    {"pattern_type": "sigma"},
                    {"pattern": ""},
                    {"pattern": rng.choice(PATTERNS).replace("]", "", 1)},
                    {"pattern": "[a:b = 'c'] AND " * 40 + "[a:b = 'c']"},
                ]
            )
        )
    elif choice == 11:
        obj["created_by_ref"] = rng.choice(
            [OTHER, SUBMITTER, "malware--6ba7b810-9dad-41d1-80b4-00c04fd430c8"]
        )
    return obj


@cache
def pool() -> list[tuple[dict[str, Any], str]]:
    found = [*corpus_objects("valid"), *corpus_objects("invalid")]
    return [*found, *((obj, SUBMITTER) for obj in fixture_objects())]


def submitter_for(rng: random.Random, usual: str) -> str:
    return rng.choice([usual, usual, usual, OTHER, usual.upper(), "identity--x"])


@pytest.mark.timeout(max(300, EXAMPLES // 10))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(rng=st.randoms(use_true_random=False))
def test_the_fast_path_answers_as_the_full_path_does(rng: random.Random) -> None:
    if rng.random() < 0.5 and pool():
        base, submitter = rng.choice(pool())
    else:
        base, submitter = generated(rng, rng.choice(TYPES)), SUBMITTER
    obj = base
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        obj = mutate(rng, obj) if isinstance(obj, dict) else obj
    decide(obj, submitter_for(rng, submitter), rng.choice(list(Tlp)), rng.choice(LIMITS))


# -- how much the fast path decides ----------------------------------------------------------


def share(objects: list[tuple[dict[str, Any], str]]) -> tuple[int, int, list[str]]:
    """(decided by the fast path, valid for the full path, types it left to the full path)."""
    fast = valid = 0
    missed = []
    for obj, submitter in objects:
        answer = decide(obj, submitter, Tlp.AMBER, Limits())
        full = validate._validate_one(copy.deepcopy(obj), 3, submitter, Tlp.AMBER, Limits())
        if isinstance(full, ValidObject):
            valid += 1
            fast += answer is not None
            if answer is None:
                missed.append(obj.get("type", "?"))
    return fast, valid, missed


def test_the_fast_path_decides_nearly_every_valid_corpus_object() -> None:
    objects = [*corpus_objects("valid"), *((o, SUBMITTER) for o in fixture_objects())]
    fast, valid, missed = share(objects)
    print(f"corpus and fixtures: fast path decided {fast} of {valid} valid ({fast / valid:.2%})")
    assert valid >= len(fixture_objects())
    assert fast >= 0.99 * valid, missed


def test_the_fast_path_decides_nearly_every_valid_generated_object() -> None:
    rng = random.Random(20260106)
    per_type = max(4, EXAMPLES // 50)
    objects = [(generated(rng, t), SUBMITTER) for t in TYPES for _ in range(per_type)]
    fast, valid, missed = share(objects)
    print(f"generated: fast path decided {fast} of {valid} valid objects ({fast / valid:.2%})")
    assert fast >= 0.99 * valid, sorted(missed)


@pytest.mark.parametrize("obj_type", TYPES)
def test_every_type_compiles_and_some_generated_object_is_fast(obj_type: str) -> None:
    assert compiled(obj_type) is not None
    rng = random.Random(obj_type)
    assert any(
        decide(generated(rng, obj_type), SUBMITTER, Tlp.GREEN, Limits()) is not None
        for _ in range(30)
    ), obj_type


def test_validate_objects_counted_reports_the_fast_share() -> None:
    objects: list[Any] = [indicator(SUBMITTER, n=i) for i in range(3)]
    objects.append({"type": "indicator"})  # refused: full path
    results, fast = validate.validate_objects_counted(
        objects, submitter_identity=SUBMITTER, default_tlp=Tlp.AMBER, limits=Limits()
    )
    assert fast == 3
    assert results == validate.validate_objects(
        objects, submitter_identity=SUBMITTER, default_tlp=Tlp.AMBER, limits=Limits()
    )

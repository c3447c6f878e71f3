"""Validation feedback a partner can act on, through real gRPC and the SDK: every
problem of a refused object in one answer, and pattern errors in words."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from exchange_client import ExchangeClient, Problem, RejectedObject

from tests.helpers import PartnerCredentials, ServerThread, bundle, indicator, settings_for

JARGON = ("mismatched input", "expecting {", "extraneous", "<EOF>", "no viable", "FAIL:")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(settings_for(tmp_path_factory.mktemp("data"))).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ngo(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("harbor-light")


def submit(server: ServerThread, who: PartnerCredentials, *objects: Any) -> list[RejectedObject]:
    with ExchangeClient(server.target, token=who.token) as client:
        result = client.submit(bundle(objects))
    assert len(result.rejected) == len(objects), result
    return result.rejected


def test_every_problem_of_an_object_comes_in_one_answer(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    obj = indicator(ngo.identity, confidence=250, valid_from="yesterday")
    del obj["pattern_type"]
    [rejected] = submit(server, ngo, obj)
    assert rejected.problems == (
        Problem(
            "confidence",
            "an integer from 0 to 100, got 250",
            "property 'confidence': an integer from 0 to 100, got 250",
        ),
        Problem(
            "valid_from",
            'a UTC timestamp like 2026-01-31T23:59:59.000Z, got "yesterday"',
            "property 'valid_from': a UTC timestamp like 2026-01-31T23:59:59.000Z,"
            ' got "yesterday"',
        ),
        Problem(
            "pattern_type",
            "required property 'pattern_type' is missing",
            "property 'pattern_type': required property 'pattern_type' is missing",
        ),
    )
    assert rejected.more_problems == 0
    # property and expected stay the first problem, as they were.
    assert (rejected.property, rejected.expected) == ("confidence", rejected.problems[0].expected)
    assert rejected.reason == (
        f"{obj['id']}: 3 problems: "
        + "; ".join(f"{n}) {p.message}" for n, p in enumerate(rejected.problems, 1))
    )


def test_past_ten_problems_the_rest_are_counted(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    obj = indicator(
        ngo.identity,
        confidence=-5,
        revoked="no",
        labels="one",
        lang=7,
        name=["x"],
        description=1,
        valid_from="today",
        valid_until="later",
        indicator_types="malicious-activity",
        external_references={},
        pattern_version=2.1,
        x_one=1,  # custom properties: one problem naming both
        x_two=2,
    )
    [rejected] = submit(server, ngo, obj)
    assert len(rejected.problems) == 10
    assert rejected.more_problems == 1
    assert rejected.reason.startswith(f"{obj['id']}: 11 problems: 1) property 'confidence'")
    assert rejected.reason.endswith("; ... and 1 more")


def test_one_problem_is_reported_as_before(server: ServerThread, ngo: PartnerCredentials) -> None:
    obj = indicator(ngo.identity, confidence=101)
    [rejected] = submit(server, ngo, obj)
    assert rejected.reason == (
        f"{obj['id']}: property 'confidence': an integer from 0 to 100, got 101"
    )
    assert [p.property for p in rejected.problems] == ["confidence"]


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (
            "[url:value = 'a' AND ]",
            "expected a comparison like file:name = 'x' after 'AND' at column 22",
        ),
        ("[url:value = 'a'", "unexpected end of pattern at column 17: expected ']'"),
        ("[url:value = lure]", "unquoted string 'lure' at column 14"),
        ("[url:value FOO 'a']", "unknown operator 'FOO' at column 12"),
        ("", "the pattern is empty"),
    ],
)
def test_pattern_errors_are_said_in_words(
    server: ServerThread, ngo: PartnerCredentials, pattern: str, words: str
) -> None:
    [rejected] = submit(server, ngo, indicator(ngo.identity, pattern=pattern))
    assert rejected.property == "pattern"
    assert rejected.expected.startswith("a valid STIX pattern; ")
    assert words in rejected.expected
    assert words in rejected.reason
    for jargon in JARGON:
        assert jargon not in rejected.reason


def test_a_bundle_of_several_bad_patterns_gets_one_sentence_each(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    patterns = ["[url:value = 'a' AND ]", "[url:value = 'a'", "[url:value = lure]"]
    rejected = submit(server, ngo, *(indicator(ngo.identity, pattern=p) for p in patterns))
    assert [r.index for r in rejected] == [0, 1, 2]
    assert all(" at column " in r.expected for r in rejected)

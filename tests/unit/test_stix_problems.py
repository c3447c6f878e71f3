"""How the problems of one object are gathered (exchange.stix._invalid.Problems) and
said (exchange.model.Rejection)."""

from __future__ import annotations

from exchange.model import Problem, Rejection
from exchange.stix._invalid import Invalid, Problems, top_level


def test_top_level_names_the_properties_a_path_starts_with() -> None:
    assert top_level("external_references[1].url") == {"external_references"}
    assert top_level("extensions.archive-ext.contains_refs") == {"extensions"}
    assert top_level("created, modified") == {"created", "modified"}
    assert top_level("") == frozenset()


def test_one_problem_per_property_and_every_problem_of_the_object() -> None:
    problems = Problems()
    problems.add(Invalid("labels[0]", "a string"))
    problems.add(Invalid("labels", "a non-empty list"))  # the same property again
    problems.add(Invalid("", "an object of at most 10 bytes"))
    problems.add(Invalid("", "an object holding at most 2 JSON objects"))
    problems.add(Invalid("created, modified", "required properties are missing"))
    problems.add(Invalid("modified", "later than created"))
    assert [(p.prop, p.expected) for p in problems.found] == [
        ("labels[0]", "a string"),
        ("", "an object of at most 10 bytes"),
        ("", "an object holding at most 2 JSON objects"),
        ("created, modified", "required properties are missing"),
    ]
    assert problems.faulted("labels") and problems.faulted("modified")
    assert not problems.faulted("confidence")


def test_run_keeps_what_a_check_returns_or_the_problem_it_raises() -> None:
    problems = Problems()

    def check(value: int) -> int:
        if value < 0:
            raise Invalid("confidence", "an integer from 0 to 100")
        return value

    assert problems.run(check, 5) == 5
    assert not problems
    assert problems.run(check, -1) is None
    assert problems and problems.found[0].prop == "confidence"


def test_a_rejection_with_one_reason_reads_as_it_always_has() -> None:
    one = Rejection("indicator--a", "confidence", "an integer from 0 to 100, got 250")
    assert one.message == "indicator--a: property 'confidence': an integer from 0 to 100, got 250"
    assert one.all_problems == (Problem("confidence", "an integer from 0 to 100, got 250"),)
    whole = Rejection("objects[3]", "", "a STIX object (a JSON object), got a JSON number")
    assert whole.message == "objects[3]: object: a STIX object (a JSON object), got a JSON number"


def test_a_rejection_names_each_problem_and_counts_those_left_out() -> None:
    listed = (
        Problem("confidence", "an integer from 0 to 100, got 250"),
        Problem("", "an object of at most 1,000,000 bytes"),
    )
    several = Rejection(
        "indicator--a", "confidence", listed[0].expected, problems=listed, more_problems=3
    )
    assert several.all_problems == listed
    assert several.message == (
        "indicator--a: 5 problems: 1) property 'confidence': an integer from 0 to 100, got 250;"
        " 2) object: an object of at most 1,000,000 bytes; ... and 3 more"
    )

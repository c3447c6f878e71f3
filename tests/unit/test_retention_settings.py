"""The [retention] settings: TOML, EXCHANGE_* variables, and the refusals that name
what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from exchange import config, registry
from exchange.cli.ops import _as_toml
from exchange.config import RetentionSettings, effective_settings, load_settings
from exchange.errors import InvalidArgument
from exchange.model import Tlp


def load(tmp_path: Path, text: str, **environ: str) -> RetentionSettings:
    path = tmp_path / "exchange.toml"
    path.write_text(text)
    return load_settings(path, environ=environ).retention


def test_defaults_erase_nothing() -> None:
    r = RetentionSettings()
    assert r.max_ages() == {} and r.communities == {}
    assert r.expire_valid_until is False
    assert (r.interval_s, r.batch) == (3600.0, 1000)


def test_from_toml_and_the_environment(tmp_path: Path) -> None:
    r = load(
        tmp_path,
        '[retention]\nbatch = 50\n[retention.max_age_days]\nred = 90\n"amber+strict" = 365\n'
        "[retention.communities]\nsea-taskforce = 30\n",
    )
    assert r.max_ages() == {Tlp.RED: 90, Tlp.AMBER_STRICT: 365}
    assert r.max_age_for(Tlp.RED) == 90 and r.max_age_for(Tlp.GREEN) is None
    assert r.communities == {"sea-taskforce": 30} and r.batch == 50
    # amber_strict: a bare key for the level whose name holds a '+'.
    assert load(tmp_path, "[retention.max_age_days]\namber_strict = 7\n").max_ages() == {
        Tlp.AMBER_STRICT: 7
    }
    # The environment replaces a table of the file.
    r = load(
        tmp_path,
        "[retention.max_age_days]\nred = 90\n",
        EXCHANGE_RETENTION_MAX_AGE_DAYS="red=30, amber+strict=60",
        EXCHANGE_RETENTION_COMMUNITIES="hotlines=10",
        EXCHANGE_RETENTION_EXPIRE_VALID_UNTIL="true",
        EXCHANGE_RETENTION_INTERVAL_S="60",
    )
    assert r.max_ages() == {Tlp.RED: 30, Tlp.AMBER_STRICT: 60}
    assert r.communities == {"hotlines": 10}
    assert (r.expire_valid_until, r.interval_s) == (True, 60.0)
    assert load(tmp_path, "", EXCHANGE_RETENTION_MAX_AGE_DAYS="").max_ages() == {}


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[retention.max_age_days]\npurple = 3\n", {}, "'purple' is not a TLP level"),
        ("[retention.max_age_days]\nwhite = 3\n", {}, "'white' is not a TLP level"),
        ("[retention.max_age_days]\nred = 0\n", {}, 'max_age_days."red" must be a whole'),
        ("[retention.max_age_days]\nred = -5\n", {}, 'max_age_days."red" must be a whole'),
        ("[retention.max_age_days]\nred = 99999\n", {}, "from 1 to 36,600"),
        ("[retention.max_age_days]\nred = 1.5\n", {}, "Expected `int`"),
        (
            '[retention.max_age_days]\namber_strict = 3\n"amber+strict" = 4\n',
            {},
            "names amber+strict twice",
        ),
        ('[retention.communities]\n"Sea Taskforce" = 3\n', {}, "is not a community name"),
        ("[retention.communities]\nhotlines = 0\n", {}, 'communities."hotlines" must be'),
        ("[retention]\nbatch = 0\n", {}, "retention.batch must be 1 or more"),
        ("[retention]\ninterval_s = 0\n", {}, "retention.interval_s must be a positive"),
        ("[retention]\nmax_age = 3\n", {}, "unknown field `max_age`"),
        ("", {"EXCHANGE_RETENTION_MAX_AGE_DAYS": "red"}, "'red' is not NAME=VALUE"),
        ("", {"EXCHANGE_RETENTION_MAX_AGE_DAYS": "red=soon"}, "Expected `int`"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    tmp_path: Path, text: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=r"(?i)retention") as caught:
        load(tmp_path, text, **environ)
    assert message in caught.value.message


def test_config_check_shows_the_tables_as_toml(tmp_path: Path) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text('[retention.max_age_days]\nred = 90\n"amber+strict" = 365\n')
    settings = load_settings(path, environ={})
    rows = effective_settings(settings, path, environ={})
    shown = {name: (value, source) for name, value, source in rows}
    assert shown["retention.max_age_days"] == ({"amber+strict": 365, "red": 90}, "file")
    assert shown["retention.communities"] == ({}, "default")
    printed = tomllib.loads(
        "\n".join(line.split("#", 1)[0] for line in _as_toml(rows).splitlines())
    )
    assert printed["retention"]["max_age_days"] == {"amber+strict": 365, "red": 90}


def test_community_names_are_the_registrys() -> None:
    assert config.COMMUNITY_NAME.pattern == registry.COMMUNITY_NAME.pattern

"""docs/configuration.md documents every setting with its default and variable."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from exchange.config import Settings, effective_settings, load_settings, mask_url

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def documented_defaults() -> dict[str, object]:
    """The TOML block under "Every setting", flattened to dotted names."""
    text = DOC.read_text()
    section = text.split("## Every setting", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block, "no TOML block under 'Every setting'"
    doc = tomllib.loads(block.group(1))
    flat: dict[str, object] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def test_every_setting_is_documented_with_its_default_and_variable() -> None:
    documented = documented_defaults()
    actual = {name: value for name, value, _ in effective_settings(Settings(), environ={})}
    assert set(documented) == set(actual)
    for name, value in actual.items():
        assert documented[name] == value, name
    text = DOC.read_text()
    for name in actual:
        assert f"EXCHANGE_{name.replace('.', '_').upper()}" in text, name


def test_the_documented_block_is_a_loadable_config(tmp_path: Path) -> None:
    text = DOC.read_text().split("## Every setting", 1)[1]
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block
    path = tmp_path / "exchange.toml"
    path.write_text(block.group(1))
    assert load_settings(path, environ={}) == Settings()


def test_secrets_are_masked_and_sources_named(tmp_path: Path) -> None:
    path = tmp_path / "exchange.toml"
    path.write_text('listen = "127.0.0.1:6000"\n[kafka]\nsasl_username = "exchange"\n')
    environ = {
        "EXCHANGE_DATABASE": "postgresql://exchange:s3cret@db:5432/exchange",
        "EXCHANGE_KAFKA_SASL_PASSWORD": "hunter2",
    }
    overrides = {"topic_prefix": "prod"}
    settings = load_settings(path, environ=environ, overrides=overrides)
    effective = effective_settings(settings, path, environ=environ, overrides=overrides)
    rows = {name: (value, source) for name, value, source in effective}
    assert rows["database"] == (
        "postgresql://exchange:***@db:5432/exchange",
        "env EXCHANGE_DATABASE",
    )
    assert rows["kafka.sasl_password"] == ("***", "env EXCHANGE_KAFKA_SASL_PASSWORD")
    assert rows["kafka.sasl_username"] == ("exchange", "file")
    assert rows["listen"] == ("127.0.0.1:6000", "file")
    assert rows["topic_prefix"] == ("prod", "option")
    assert rows["data_dir"][1] == "default"
    assert "s3cret" not in repr(rows) and "hunter2" not in repr(rows)


def test_mask_url() -> None:
    assert mask_url("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        mask_url("postgresql://h/db?user=u&password=p") == "postgresql://h/db?user=u&password=***"
    )
    assert mask_url("postgresql://u:p:q@h/db") == "postgresql://u:***@h/db"

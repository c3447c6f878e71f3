"""open_store: which store the settings name, and a clear error without the driver."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from exchange.config import load_settings
from exchange.errors import InvalidArgument
from exchange.store import open_store
from exchange.store.sqlite import SqliteStore


def test_the_embedded_default_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    store = open_store(load_settings(environ={}, overrides={"data_dir": str(tmp_path)}))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "exchange.sqlite3"


def test_postgresql_without_its_driver_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m.startswith("exchange.store.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if not installed
    settings = load_settings(
        environ={}, overrides={"database": "postgresql://exchange@127.0.0.1/exchange"}
    )
    with pytest.raises(
        InvalidArgument, match=r"pip install 'trafficking-indicator-exchange\[postgres\]'"
    ):
        open_store(settings)

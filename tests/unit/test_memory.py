"""exchange._memory: what `exchange serve` does to the process's memory management."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from exchange._memory import collect_less_often


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector")
def test_a_started_server_collects_less_often_and_never_what_start_up_made() -> None:
    made_at_start: list[list[int]] = [[] for _ in range(10)]  # alive "at start-up"
    collect_less_often()
    assert gc.get_freeze_count() >= len(made_at_start)
    assert gc.get_threshold()[0] >= 10_000
    # Cycles made later are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1

"""The worker's use of the cyclic garbage collector (gc_policy.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline.runtime.gc_policy import collections_deferred


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


def test_no_collection_runs_inside_the_block_and_it_is_back_on_after() -> None:
    gc.enable()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        young_threshold = gc.get_threshold()[0]
        with collections_deferred():
            assert not gc.isenabled()
            # Far more tracked objects than a young collection waits for, all kept alive.
            alive = [[] for _ in range(young_threshold * 3 + 1000)]
            during = len(collections)
        assert during == 0
        assert gc.isenabled()
        del alive
    finally:
        gc.callbacks.remove(count)


def test_collection_is_back_on_when_the_block_raises() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), collections_deferred():
        raise RuntimeError("a failing batch")
    assert gc.isenabled()


def test_a_caller_that_turned_collection_off_keeps_it_off() -> None:
    gc.disable()
    with collections_deferred():
        assert not gc.isenabled()
    assert not gc.isenabled()

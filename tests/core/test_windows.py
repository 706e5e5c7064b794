"""Window assignment: tumbling and hopping, aligned to the epoch, with grace."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.windows import WindowSpec

MIN = 60_000


def test_tumbling_window_contains_its_start_not_its_end() -> None:
    w = WindowSpec.tumbling(MIN, grace_ms=30_000)
    assert w.starts(0) == [0]
    assert w.starts(MIN - 1) == [0]
    assert w.starts(MIN) == [MIN]
    assert w.starts(1_795_000_012_345) == [1_795_000_000_000 - 1_795_000_000_000 % MIN]
    assert w.end(MIN) == 2 * MIN
    assert w.closes_at(MIN) == 2 * MIN + 30_000


def test_negative_timestamps_floor_to_the_earlier_window() -> None:
    w = WindowSpec.tumbling(MIN)
    assert w.starts(-1) == [-MIN]
    assert w.starts(-MIN) == [-MIN]


def test_hopping_windows_latest_first() -> None:
    w = WindowSpec.hopping(5 * MIN, MIN)
    assert w.starts(7 * MIN + 5) == [7 * MIN, 6 * MIN, 5 * MIN, 4 * MIN, 3 * MIN]
    assert w.last_start(7 * MIN + 5) == 7 * MIN
    # size not a multiple of advance: 150 s windows every 60 s
    w = WindowSpec.hopping(150_000, MIN)
    assert w.starts(130_000) == [120_000, 60_000, 0]
    assert w.starts(170_000) == [120_000, 60_000]
    assert w.starts(100_000) == [60_000, 0]


def test_is_closed_at_end_plus_grace() -> None:
    w = WindowSpec.tumbling(MIN, grace_ms=10)
    assert not w.is_closed(0, None)
    assert not w.is_closed(0, MIN + 9)
    assert w.is_closed(0, MIN + 10)


@pytest.mark.parametrize(
    ("size", "advance", "grace"), [(0, 0, 0), (MIN, 2 * MIN, 0), (MIN, MIN, -1), (MIN, 0, 0)]
)
def test_invalid_specs(size: int, advance: int, grace: int) -> None:
    with pytest.raises(ValueError):
        WindowSpec(size, advance, grace)


@given(
    ts=st.integers(-(10**13), 10**13),
    advance=st.integers(1, 10**6),
    factor=st.integers(1, 7),
    extra=st.integers(0, 999),
)
def test_starts_are_exactly_the_windows_containing_the_timestamp(
    ts: int, advance: int, factor: int, extra: int
) -> None:
    size = advance * factor + min(extra, advance - 1)
    w = WindowSpec.hopping(size, advance)
    starts = w.starts(ts)
    assert starts == sorted(starts, reverse=True)
    assert all(s % advance == 0 and s <= ts < s + size for s in starts)
    # no other aligned start contains ts
    assert not (starts[0] + advance <= ts < starts[0] + advance + size)
    assert not (starts[-1] - advance <= ts < starts[-1] - advance + size)
    assert len(starts) in (size // advance, -(-size // advance))

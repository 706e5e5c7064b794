"""Measures: update, merge (associative, commutative), bytes round trip, HyperLogLog accuracy."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.measures import (
    FORMAT_VERSION,
    HyperLogLog,
    MeasureDecodeError,
    MeasureSpec,
    decode_measures,
    encode_measures,
    merge_all,
)

SPECS = (
    MeasureSpec("n", "count"),
    MeasureSpec("present", "count", field="x"),
    MeasureSpec("total", "sum", field="x"),
    MeasureSpec("low", "min", field="x"),
    MeasureSpec("high", "max", field="x"),
    MeasureSpec("mean", "avg", field="x"),
    MeasureSpec("exact", "distinct", field="x", method="exact"),
    MeasureSpec("approx", "distinct", field="x", method="hll", precision=10),
)


def fill(values: list[Any]) -> list[Any]:
    measures = [s.new() for s in SPECS]
    for v in values:
        for spec, m in zip(SPECS, measures):
            m.update(True if spec.field is None else v)
    return measures


def results(measures: list[Any]) -> dict[str, Any]:
    return {s.id: m.result() for s, m in zip(SPECS, measures)}


def test_values_and_skips() -> None:
    ms = fill([3, 1.5, "7", None, True, 2, float("inf")])
    r = results(ms)
    assert r["n"] == 7
    assert r["present"] == 6  # null is not present
    assert r["total"] == 6.5
    assert (r["low"], r["high"]) == (1.5, 3)
    assert r["mean"] == pytest.approx(6.5 / 3)
    assert r["exact"] == 6  # 3, 1.5, "7", true, 2, inf... as JSON keys
    assert [m.skipped for m in ms] == [0, 1, 4, 4, 4, 4, 1, 1]


def test_empty_measures() -> None:
    r = results(fill([]))
    assert r == {
        "n": 0,
        "present": 0,
        "total": 0,
        "low": None,
        "high": None,
        "mean": None,
        "exact": 0,
        "approx": 0,
    }


def test_sum_is_exact_and_order_independent() -> None:
    values = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3]
    a = fill(values)
    b = fill(list(reversed(values)))
    assert results(a)["total"] == results(b)["total"] == math.fsum(values)
    assert results(fill([2**70, 1]))["total"] == 2**70 + 1  # ints stay ints


def test_int_vs_string_distinct_keys() -> None:
    # Values are told apart as JSON text: 1 and "1" are one value, 1.0 another.
    assert results(fill([1, "1", 1.0, "a", "a"]))["exact"] == 3


def test_bytes_round_trip() -> None:
    ms = fill([3, -2.25, "x", None, 10**19, "é"])
    data = encode_measures(ms)
    assert data[0] == FORMAT_VERSION
    back = decode_measures(SPECS, data)
    assert results(back) == results(ms)
    assert encode_measures(back) == data


def test_decode_refuses_other_specs() -> None:
    data = encode_measures(fill([1]))
    with pytest.raises(MeasureDecodeError):
        decode_measures(SPECS[:-1], data)
    with pytest.raises(MeasureDecodeError):
        decode_measures((MeasureSpec("n", "sum", field="x"), *SPECS[1:]), data)
    with pytest.raises(MeasureDecodeError):
        decode_measures(SPECS, b"\x09" + data[1:])
    with pytest.raises(MeasureDecodeError):
        decode_measures(SPECS, data[:-3])
    other_precision = (
        *SPECS[:-1],
        MeasureSpec("approx", "distinct", field="x", method="hll", precision=11),
    )
    with pytest.raises(MeasureDecodeError):
        decode_measures(other_precision, data)


@pytest.mark.parametrize("n", [0, 1, 10, 1000, 10_000, 50_000, 100_000])
def test_hll_error_under_two_percent(n: int) -> None:
    h = HyperLogLog(14)
    for i in range(n):
        h.update(f"user-{i}")
    assert abs(h.result() - n) <= max(1, 0.02 * n)


def test_hll_sparse_and_dense_encodings_round_trip_and_merge() -> None:
    spec = MeasureSpec("u", "distinct", field="u", method="hll", precision=12)
    small, big = spec.new(), spec.new()
    for i in range(20):
        small.update(f"s{i}")
    for i in range(20_000):
        big.update(f"b{i}")
    assert small.sparse is not None and big.dense is not None
    for sketch in (small, big):
        data = encode_measures([sketch])
        (back,) = decode_measures([spec], data)
        assert back.registers() == sketch.registers()
    assert len(encode_measures([small])) < 100
    merged = merge_all([spec], [encode_measures([small]), encode_measures([big])])[0]
    direct = spec.new()
    for i in range(20):
        direct.update(f"s{i}")
    for i in range(20_000):
        direct.update(f"b{i}")
    assert merged.registers() == direct.registers()
    assert merged.result() == direct.result()


def test_hll_merge_is_register_max() -> None:
    a, b = HyperLogLog(4), HyperLogLog(4)
    a._set(1, 3)
    b._set(1, 5)
    b._set(2, 1)
    a.merge(b)
    assert a.registers()[1:3] == bytearray([5, 1])
    with pytest.raises(ValueError):
        a.merge(HyperLogLog(5))


value = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12),
    st.sampled_from(["a", "b", "c", "dé"]),
    st.none(),
    st.booleans(),
)
values = st.lists(value, max_size=30)


def merged(*parts: list[Any]) -> list[Any]:
    return merge_all(SPECS, [encode_measures(fill(p)) for p in parts])


@settings(max_examples=150, deadline=None)
@given(a=values, b=values, c=values)
def test_merge_is_associative_and_commutative_and_equals_direct(
    a: list[Any], b: list[Any], c: list[Any]
) -> None:
    direct = encode_measures(fill(a + b + c))
    ab_c = fill(a + b)
    for m, other in zip(ab_c, fill(c)):
        m.merge(other)
    a_bc = fill(a)
    for m, other in zip(a_bc, fill(b + c)):
        m.merge(other)
    assert encode_measures(ab_c) == encode_measures(a_bc) == direct or (
        results(ab_c) == results(a_bc) == results(decode_measures(SPECS, direct))
    )
    assert results(merged(c, a, b)) == results(merged(a, b, c)) == results(fill(a + b + c))

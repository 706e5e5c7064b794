"""Measures updated a batch at a time, and the HyperLogLog byte format, against plain references.

The aggregator updates each (window, group) once per batch (``update_many`` / ``update_keys``)
and the HyperLogLog reads, writes and merges registers with C-level helpers; the bytes are
stored in changelogs and read by other workers, so they must be exactly what one update per
value and the straightforward loops below (the format's definition) give.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from pipeline.core import measures as measures_module
from pipeline.core.measures import (
    HyperLogLog,
    MeasureDecodeError,
    MeasureSpec,
    _put_uvarint,
    _Reader,
    decode_measures,
    distinct_key,
    distinct_keys,
    encode_measures,
)

SPECS = (
    MeasureSpec("present", "count", field="x"),
    MeasureSpec("total", "sum", field="x"),
    MeasureSpec("low", "min", field="x"),
    MeasureSpec("high", "max", field="x"),
    MeasureSpec("mean", "avg", field="x"),
    MeasureSpec("exact", "distinct", field="x", method="exact"),
    MeasureSpec("approx", "distinct", field="x", method="hll", precision=10),
    MeasureSpec("approx14", "distinct", field="x", method="hll", precision=14),
)


def awkward_values(rnd: random.Random, n: int) -> list[Any]:
    """Values whose order matters somewhere: floats of many magnitudes (the exact sum's
    partials), 1 and 1.0 and -0.0 (min/max keep the first of equals), and values skipped."""
    pool: list[Any] = [1, 1.0, -0.0, 0, 0.0, True, None, "7", 7, "x", float("inf"), float("nan")]
    values: list[Any] = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.4:
            values.append(rnd.uniform(-1, 1) * 10 ** rnd.randint(-20, 20))
        elif r < 0.6:
            values.append(rnd.randint(-(10**20), 10**20))
        elif r < 0.8:
            values.append(f"u{rnd.randint(0, 300)}")
        else:
            values.append(rnd.choice(pool))
    return values


@pytest.mark.parametrize("seed", range(8))
def test_update_many_gives_the_bytes_of_one_update_per_value(seed: int) -> None:
    rnd = random.Random(seed)
    values = awkward_values(rnd, 400)
    one_by_one = [s.new() for s in SPECS]
    batched = [s.new() for s in SPECS]
    for chunk_start in range(0, len(values), 37):
        chunk = values[chunk_start : chunk_start + 37]
        for m in one_by_one:
            for v in chunk:
                m.update(v)
        for m in batched:
            m.update_many(chunk)
        assert encode_measures(batched) == encode_measures(one_by_one)


def test_the_order_of_floats_is_stored() -> None:
    # Why update_many keeps the order: the same sum, other partials, other bytes.
    in_order, reordered = (
        MeasureSpec("s", "sum", field="x").new(),
        MeasureSpec("s", "sum", field="x").new(),
    )
    in_order.update_many([1e100, 1.0, -1e100, 0.5])
    reordered.update_many([1.0, -1e100, 0.5, 1e100])
    assert in_order.result() == reordered.result() == 1.5
    assert encode_measures([in_order]) != encode_measures([reordered])


def test_update_keys_takes_distinct_keys() -> None:
    values: list[Any] = ["a", None, 3, "3", {"b": 1, "a": 2}, [1, 2], "a", None, 2.5]
    keys = distinct_keys(values)
    assert keys == [distinct_key(v) for v in values]
    strings = ["a", None, "b"]
    assert distinct_keys(strings) is strings  # nothing to convert: the list itself
    for spec in (SPECS[5], SPECS[6]):
        one_by_one, batched = spec.new(), spec.new()
        for v in values:
            one_by_one.update(v)
        batched.update_keys(keys)
        assert encode_measures([batched]) == encode_measures([one_by_one])


def test_hll_register_memo_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny memo, emptied over and over, changes nothing.
    monkeypatch.setattr(measures_module, "_REGISTER_MEMO_MAX", 5)
    monkeypatch.setattr(measures_module, "_REGISTER_MEMOS", {})
    keys = [f"user-{i % 97}" for i in range(1000)]
    plain, memoised = HyperLogLog(12), HyperLogLog(12)
    for k in keys:
        plain.update(k)
    for start in range(0, len(keys), 50):
        memoised.update_keys(keys[start : start + 50])
    assert memoised.registers() == plain.registers()
    assert len(measures_module._REGISTER_MEMOS[12]) <= 5 + 50


# --- the HyperLogLog format, written out plainly -------------------------------------------


def reference_write(h: HyperLogLog) -> bytes:
    out = bytearray()
    _put_uvarint(out, h.skipped)
    out.append(h.p)
    registers = h.registers()
    entries = [(i, r) for i, r in enumerate(registers) if r]
    if h.sparse is not None:
        entries = sorted(h.sparse.items())
    if len(entries) * 3 < h.m:
        out.append(0)
        _put_uvarint(out, len(entries))
        previous = 0
        for index, rank in entries:
            _put_uvarint(out, index - previous)
            out.append(rank)
            previous = index
    else:
        out.append(1)
        out += registers
    return bytes(out)


def reference_read_sparse(data: bytes) -> dict[int, int]:
    r = _Reader(data)
    index = 0
    sparse = {}
    for _ in range(r.uvarint()):
        index += r.uvarint()
        sparse[index] = r.byte()
    return sparse


def reference_estimate(registers: bytearray, p: int) -> float:
    m, q = 1 << p, 64 - p
    histogram = [0] * (q + 2)
    for rank in registers:
        histogram[rank] += 1
    if histogram[0] == m:
        return 0.0
    z = m * measures_module._tau(1.0 - histogram[q + 1] / m)
    for k in range(q, 0, -1):
        z = (z + histogram[k]) * 0.5
    z += m * measures_module._sigma(histogram[0] / m)
    return m * m / (2.0 * math.log(2.0) * z)


def sketch(p: int, n: int, seed: int) -> HyperLogLog:
    h = HyperLogLog(p)
    for i in range(n):
        h.update(f"{seed}-{i}")
    return h


SKETCHES = [
    (4, 0),
    (4, 3),
    (10, 5),  # sparse, deltas over 127: multi-byte varints
    (10, 9),  # just dense in memory, still written as pairs, deltas over 127
    (10, 200),  # dense in memory, pairs with one-byte deltas
    (10, 3000),  # every register: written dense
    (14, 40),
    (14, 2000),
    (14, 60_000),
]


@pytest.mark.parametrize(("p", "n"), SKETCHES)
def test_hll_bytes_are_the_reference_format(p: int, n: int) -> None:
    h = sketch(p, n, seed=n)
    h.skipped = n % 5
    out = bytearray()
    h.write(out)
    assert bytes(out) == reference_write(h)
    spec = MeasureSpec("u", "distinct", field="x", method="hll", precision=p)
    back = decode_measures([spec], encode_measures([h]))[0]
    assert back.registers() == h.registers() and back.skipped == h.skipped
    if out[2] == 0:  # written as pairs
        assert reference_read_sparse(bytes(out[3:])) == {
            i: r for i, r in enumerate(h.registers()) if r
        }
    assert h.estimate() == reference_estimate(h.registers(), p)
    assert back.estimate() == h.estimate()


def test_hll_pairs_with_long_deltas_and_repeats_read_like_the_loop() -> None:
    # Not what write makes, but valid bytes: a two-byte delta and a repeated index (delta 0).
    body = bytearray()
    _put_uvarint(body, 4)
    for delta, rank in ((3, 2), (300, 5), (0, 7), (1, 1)):
        _put_uvarint(body, delta)
        body.append(rank)
    data = bytearray([0, 10, 0]) + body  # skipped, p, pairs
    payload = bytes([1, 7]) + bytes([len(data)]) + bytes(data)
    spec = MeasureSpec("u", "distinct", field="x", method="hll", precision=10)
    h = decode_measures([spec], payload)[0]
    assert h.sparse == reference_read_sparse(bytes(body)) == {3: 2, 303: 7, 304: 1}
    with pytest.raises(MeasureDecodeError):  # truncated in the middle of a pair
        decode_measures([spec], bytes([1, 7, len(data) - 1]) + bytes(data[:-1]))


def test_hll_merge_is_the_register_max() -> None:
    rnd = random.Random(3)
    for p in (4, 10, 14):
        a, b = sketch(p, 5000, 1), sketch(p, 3000, 2)
        expected = bytearray(map(max, a.registers(), b.registers()))
        merged = HyperLogLog(p)
        merged.merge(a)  # into an empty sketch: a copy
        merged.merge(b)
        assert merged.registers() == expected
        a_before = a.registers()
        copy = HyperLogLog(p)
        copy.merge(a)
        copy.update_keys([f"more-{i}" for i in range(3000)])
        assert a.registers() == a_before != copy.registers()  # the copy is not the input
        # registers that are no ranks (corrupt state) still merge as the maximum
        x = bytearray(rnd.randrange(256) for _ in range(1 << p))
        y = bytearray(rnd.randrange(256) for _ in range(1 << p))
        assert measures_module._register_max(x, y) == bytearray(map(max, x, y))
        x = bytearray(rnd.randrange(64) for _ in range(1 << p))
        y = bytearray(rnd.randrange(64) for _ in range(1 << p))
        assert measures_module._register_max(x, y) == bytearray(map(max, x, y))
